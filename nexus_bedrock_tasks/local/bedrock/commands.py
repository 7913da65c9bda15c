"""CLI commands of this package (registered by nexus_bedrock_tasks.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the ``bedrock`` command (the emulator server) to `app`."""

    @app.command("bedrock")
    def bedrock(
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8766,
        agents: Annotated[
            Path | None,
            typer.Option(help="Agents YAML file (default: deployments/agents.yaml)."),
        ] = None,
        replay: Annotated[
            Path | None,
            typer.Option(help="Directory of recorded bodies (index.json) to replay by agent id."),
        ] = None,
    ) -> None:
        """Run the local Bedrock Agent Runtime emulator (stock boto3 talks to it)."""
        from nexus_bedrock_tasks.local.bedrock.server import build_server
        from nexus_bedrock_tasks.local.serving import bind_socket, socket_url

        try:
            server = build_server(agents, replay, log_level="info")
            sock = bind_socket(host, port)
        except (ValueError, OSError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(code=2) from exc
        url = socket_url(sock)
        typer.echo(f"Bedrock Agent Runtime emulator listening on {url}")
        typer.echo(f"export AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME={url}")
        try:
            # uvicorn handles SIGINT/SIGTERM itself and returns after a graceful shutdown.
            server.run(sockets=[sock])
        finally:
            sock.close()
        typer.echo("Bedrock Agent Runtime emulator stopped")
