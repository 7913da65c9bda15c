"""CLI commands of this package (registered by nexus_bedrock_tasks.cli).

FastAPI and uvicorn are imported inside the command, so `nexus-bedrock --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nexus_bedrock_tasks.local.nexus.config import DEFAULT_HOST, DEFAULT_PORT, DEV_KEY, PlanLimits
from nexus_bedrock_tasks.settings import user_data_dir

DB_FILE_NAME = "local-nexus.sqlite3"


def register(app: typer.Typer) -> None:
    """Add the `nexus` command (the local Nexus-compatible server) to `app`."""

    @app.command("nexus")
    def nexus(
        port: Annotated[int, typer.Option(help="TCP port; 0 picks a free one.")] = DEFAULT_PORT,
        host: Annotated[
            str,
            typer.Option(help="Interface to bind. The web page asks for no key: keep it local."),
        ] = DEFAULT_HOST,
        db: Annotated[
            Path | None,
            typer.Option(
                "--db",
                metavar="FILE",
                help=f"SQLite file of the traces (default: <user data dir>/{DB_FILE_NAME}).",
            ),
        ] = None,
        api_key: Annotated[
            str, typer.Option(help="The key to accept (`nxs_...`); clients send it as Bearer.")
        ] = DEV_KEY,
        free_plan: Annotated[
            bool,
            typer.Option(help="Emulate the free plan: 1 agent (403), 1,000 traces/month (429)."),
        ] = False,
        max_agents: Annotated[
            int | None, typer.Option(min=0, help="Agent limit (403 past it); beats --free-plan.")
        ] = None,
        monthly_trace_limit: Annotated[
            int | None, typer.Option(min=0, help="Traces a month (429 past it); beats --free-plan.")
        ] = None,
        faults: Annotated[
            bool, typer.Option(help="Enable fault injection over HTTP at /_faults (client tests).")
        ] = False,
    ) -> None:
        """Run a local Nexus-compatible API with a trace viewer at / (offline demo and tests)."""
        from nexus_bedrock_tasks.local.nexus.app import create_app
        from nexus_bedrock_tasks.local.nexus.server import bind_socket, make_server, socket_url

        db_path = db or user_data_dir() / DB_FILE_NAME
        plan = PlanLimits.free() if free_plan else PlanLimits()
        nexus_app = create_app(
            db_path,
            api_key,
            faults=faults,
            max_agents=plan.max_agents if max_agents is None else max_agents,
            monthly_trace_limit=(
                plan.monthly_trace_limit if monthly_trace_limit is None else monthly_trace_limit
            ),
        )
        sock = bind_socket(host, port)
        url = socket_url(sock)
        typer.echo(f"Local Nexus on {url}  (trace viewer: {url}/)")
        typer.echo(f"Database: {db_path}")
        typer.echo(f"Clients: NEXUS_BASE_URL={url} NEXUS_API_KEY={api_key}")
        if faults:
            typer.echo(f"Fault injection on: PUT {url}/_faults")
        try:
            make_server(nexus_app, quiet=False).run(sockets=[sock])
        finally:
            sock.close()
