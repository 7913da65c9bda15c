"""`nexus-bedrock local up|status|down|env`: the local stack, started once, used by every call.

`status` and `env` only read the state file and probe health URLs; Prefect, FastAPI and
uvicorn load in the background processes, never here.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final

import typer

from nexus_bedrock_tasks.local.prefect_api import (
    PG_DATABASE,
    PG_USER,
    PostgresCluster,
    init_postgres_cluster,
    postgres_cluster,
    prefect_server_argv,
    prefect_server_env,
    sqlite_database_url,
    wait_postgres_ready,
)
from nexus_bedrock_tasks.local.resident import resident_argv, runs_older_code
from nexus_bedrock_tasks.local.stack import (
    DEFAULT_HOST,
    DEFAULT_PORTS,
    SERVICES,
    STOP_ORDER,
    STOP_TIMEOUT_S,
    PortTakenError,
    ServiceRecord,
    ServiceStartError,
    StackError,
    client_url,
    environment_for,
    is_healthy,
    is_ours,
    load_records,
    log_path,
    log_tail,
    port_is_free,
    resident_socket_path,
    save_records,
    split_records,
    stack_environment,
    stack_lock,
    start_service,
    stop_service,
)

UP_TIMEOUT_S: Final = 120.0
_SERVICE_TITLES: Final[Mapping[str, str]] = {
    "prefect": "the Prefect API server",
    "bedrock": "the Bedrock Agent Runtime emulator",
    "nexus": "the local Nexus",
    "postgres": "Prefect's PostgreSQL (with --postgres)",
    "resident": "the resident runner (pre-imported flow commands)",
}
PORT_OPTIONS: Final[Mapping[str, str]] = {
    name: f"--{name}-port" for name in ("prefect", "bedrock", "nexus", "postgres")
}


@dataclass(frozen=True)
class StackPlan:
    """What `local up` was asked for.

    Attributes:
        services: the services to run (a subset of `SERVICES`).
        ports: the port of every service, ``postgres`` included.
        host: the interface the HTTP services listen on.
        postgres: run Prefect on a private PostgreSQL cluster instead of SQLite.
        agents: the emulator's agents file (None: its default).
        timeout: seconds a service may take to answer its health check.
    """

    services: Sequence[str]
    ports: Mapping[str, int]
    host: str = DEFAULT_HOST
    postgres: bool = False
    agents: Path | None = None
    timeout: float = UP_TIMEOUT_S


@dataclass
class UpOutcome:
    """What `bring_up` did.

    Attributes:
        records: the asked-for services, all running and answering.
        started: the services started now (``postgres`` included); the others were reused.
        elapsed_s: seconds until all of them answered.
    """

    records: dict[str, ServiceRecord] = field(default_factory=dict)
    started: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def _service_argv(name: str, plan: StackPlan) -> list[str]:
    if name == "resident":
        return resident_argv(str(resident_socket_path()))
    if name == "prefect":
        return prefect_server_argv(plan.host, plan.ports[name])
    argv = [sys.executable, "-m", "nexus_bedrock_tasks.cli", "local", name]
    argv += ["--host", plan.host, "--port", str(plan.ports[name])]
    if name == "bedrock" and plan.agents is not None:
        argv += ["--agents", str(plan.agents.resolve())]
    return argv


def _check_ports(names: Sequence[str], plan: StackPlan) -> None:
    claimed: dict[int, str] = {}
    for name in names:
        if name not in plan.ports:
            continue  # the resident runner listens on a Unix socket
        port = plan.ports[name]
        if port in claimed:
            raise StackError(
                f"{claimed[port]} and {name} cannot share port {port}: "
                f"choose another with {PORT_OPTIONS[name]}"
            )
        claimed[port] = name
        if not port_is_free(DEFAULT_HOST if name == "postgres" else plan.host, port):
            raise PortTakenError(name, port, PORT_OPTIONS[name])


def _wait_healthy(records: Sequence[ServiceRecord], timeout: float) -> ServiceRecord | None:
    """Wait until every service answers; the first that died or timed out, else None."""
    pending = list(records)
    deadline = time.monotonic() + timeout
    while True:
        pending = [record for record in pending if not is_healthy(record)]
        if not pending:
            return None
        dead = [record for record in pending if not is_ours(record)]
        if dead or time.monotonic() > deadline:
            return (dead or pending)[0]
        time.sleep(0.2)


def _start_postgres(cluster: PostgresCluster, plan: StackPlan) -> ServiceRecord:
    init_postgres_cluster(cluster)
    return start_service(
        "postgres",
        cluster.server_argv(plan.ports["postgres"]),
        host=DEFAULT_HOST,
        port=plan.ports["postgres"],
        env=os.environ,
        run_as=cluster.run_as,
    )


def _start_named_service(name: str, plan: StackPlan, database_url: str | None) -> ServiceRecord:
    """Start Prefect (on `database_url`, default SQLite), the emulator, the local Nexus, or
    the resident runner (which takes each caller's environment; its own matters little)."""
    if name == "resident":
        # The environment of a non-verbose flow command: what Prefect then configures at
        # import is what most children need (see `resident.preload`).
        env = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
        env.update({"PYTHONUNBUFFERED": "1", "PREFECT_LOGGING_LEVEL": "WARNING"})
        return start_service(
            name, _service_argv(name, plan), host=str(resident_socket_path()), port=0, env=env
        )
    if name != "prefect":
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return start_service(
            name, _service_argv(name, plan), host=plan.host, port=plan.ports[name], env=env
        )
    api_url = client_url(plan.host, plan.ports[name]) + "/api"
    return start_service(
        name,
        _service_argv(name, plan),
        host=plan.host,
        port=plan.ports[name],
        env=prefect_server_env(api_url, database_url or sqlite_database_url()),
        database="sqlite" if database_url is None else "postgresql",
    )


def bring_up(plan: StackPlan) -> UpOutcome:
    """Start what is not running yet, reuse what is, and wait until all of it answers.

    Stale records (a gone or recycled pid) are forgotten, never signalled. All ports are
    checked before anything starts, so a taken port leaves the machine as it was. Prefect
    keeps its database: PostgreSQL when asked, or when the stack's cluster already runs.

    Raises:
        StackError: a port is taken, PostgreSQL is missing, or the database does not match.
        ServiceStartError: a service died or stayed silent; it is stopped, the others stay.
    """
    with stack_lock():
        live, stale = split_records(load_records())
        resident = live.get("resident")
        if resident is not None and runs_older_code(resident.host):
            # It imported older code: launchers would refuse it; start it anew.
            stop_service(resident)
            del live["resident"]
            stale["resident"] = resident
        if stale:
            save_records(live)
        prefect = live.get("prefect")
        if plan.postgres and prefect is not None and prefect.database != "postgresql":
            raise StackError(
                f"Prefect already runs on {prefect.database}: stop the stack with "
                "`nexus-bedrock local down`, then run `nexus-bedrock local up --postgres`"
            )
        to_start = [name for name in plan.services if name not in live]
        cluster = None
        if "prefect" in to_start and (plan.postgres or "postgres" in live):
            cluster = postgres_cluster()
            if "postgres" not in live:
                to_start.insert(0, "postgres")
        _check_ports(to_start, plan)
        begun = time.monotonic()
        database_url = None
        if cluster is not None:
            if "postgres" not in live:
                live["postgres"] = _start_postgres(cluster, plan)
                save_records(live)
            wait_postgres_ready(cluster, live["postgres"], plan.timeout)
            database_url = cluster.connection_url(live["postgres"].port)
        for name in to_start:
            if name != "postgres":
                live[name] = _start_named_service(name, plan, database_url)
                save_records(live)
        outcome = UpOutcome(records={name: live[name] for name in plan.services})
        failed = _wait_healthy(list(outcome.records.values()), plan.timeout)
        if failed is not None:
            what = f"did not answer within {plan.timeout:.0f} s" if is_ours(failed) else "exited"
            stop_service(failed)
            del live[failed.name]
            save_records(live)
            raise ServiceStartError(
                f"{failed.name} {what} while starting; "
                f"its log ({log_path(failed.name)}) ends with:\n{log_tail(failed.name)}"
            )
        outcome.started = to_start
        outcome.elapsed_s = time.monotonic() - begun
    return outcome


def status_report(records: Mapping[str, ServiceRecord]) -> dict[str, dict[str, Any]]:
    """The state of every service as `local status --json` prints it."""
    report: dict[str, dict[str, Any]] = {}
    for name in (*SERVICES, "postgres"):
        record = records.get(name)
        running = record is not None and is_ours(record)
        if name == "postgres" and record is None:
            continue
        url = _service_url(record) if record is not None and running else None
        entry: dict[str, Any] = {
            "running": running,
            "healthy": running and record is not None and is_healthy(record),
            "url": url,
            "pid": record.pid if record is not None and running else None,
            "log": str(log_path(name)),
        }
        if name == "prefect":
            entry["database"] = record.database if record is not None and running else None
        report[name] = entry
    return report


def _service_url(record: ServiceRecord) -> str:
    if record.name == "resident":
        return f"unix:{record.host}"
    if record.name == "prefect":
        return record.url + "/api"
    if record.name == "postgres":
        return f"postgresql://{PG_USER}@{DEFAULT_HOST}:{record.port}/{PG_DATABASE}"
    return record.url


def _describe(name: str, record: ServiceRecord) -> str:
    url = _service_url(record)
    details = [f"pid {record.pid}"]
    if record.database is not None:
        details.append(record.database)
    if name == "nexus":
        details.append(f"trace viewer {record.url}/")
    return f"{name:<8} {url:<28} ({', '.join(details)})"


def _export_lines(environment: Mapping[str, str]) -> list[str]:
    return [f"export {key}={shlex.quote(value)}" for key, value in environment.items()]


def _parse_only(only: str) -> list[str]:
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SERVICES))
    if unknown or not names:
        raise typer.BadParameter(f"choose from {', '.join(SERVICES)}", param_hint="--only")
    return [name for name in SERVICES if name in names]


def _fail(exc: StackError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(exc.exit_code)


def _port_option(name: str) -> Any:
    return typer.Option(
        PORT_OPTIONS[name],
        envvar=f"NEXUS_BEDROCK_STACK_{name.upper()}_PORT",
        min=1,
        max=65535,
        help=f"Port of {_SERVICE_TITLES[name]}.",
    )


def register(app: typer.Typer) -> None:
    """Add `up`, `status`, `down` and `env` to the `local` command group."""

    @app.command("up")
    def up(
        postgres: Annotated[
            bool, typer.Option("--postgres", help="Prefect on a private PostgreSQL cluster.")
        ] = False,
        only: Annotated[str, typer.Option(help="Services to run, comma-separated.")] = ",".join(
            SERVICES
        ),
        host: Annotated[str, typer.Option(help="Interface of the HTTP services.")] = DEFAULT_HOST,
        prefect_port: Annotated[int, _port_option("prefect")] = DEFAULT_PORTS["prefect"],
        bedrock_port: Annotated[int, _port_option("bedrock")] = DEFAULT_PORTS["bedrock"],
        nexus_port: Annotated[int, _port_option("nexus")] = DEFAULT_PORTS["nexus"],
        postgres_port: Annotated[int, _port_option("postgres")] = DEFAULT_PORTS["postgres"],
        agents: Annotated[
            Path | None, typer.Option(help="The emulator's agents YAML file.")
        ] = None,
        timeout: Annotated[
            float, typer.Option(min=1, help="Seconds each service may take to answer.")
        ] = UP_TIMEOUT_S,
    ) -> None:
        """Start the local stack in the background (Prefect API, Bedrock emulator, Nexus).

        A second `up` reuses what already runs. Logs and pid files live under the user
        data dir; `nexus-bedrock local down` stops exactly what `up` started.
        """
        ports = {
            "prefect": prefect_port,
            "bedrock": bedrock_port,
            "nexus": nexus_port,
            "postgres": postgres_port,
        }
        services = _parse_only(only)
        if postgres and "prefect" not in services:
            raise typer.BadParameter("PostgreSQL is Prefect's database: add prefect to --only")
        plan = StackPlan(services, ports, host, postgres, agents, timeout)
        try:
            outcome = bring_up(plan)
        except StackError as exc:
            raise _fail(exc) from exc
        for name, record in outcome.records.items():
            verb = "started" if name in outcome.started else "reused "
            typer.echo(f"{verb} {_describe(name, record)}")
        if outcome.started:
            typer.echo(f"Ready in {outcome.elapsed_s:.1f} s. Logs: {log_path('prefect').parent}")
        typer.echo('\nFor other shells: eval "$(nexus-bedrock local env)", or copy:')
        for line in _export_lines(environment_for(outcome.records)):
            typer.echo(line)
        typer.echo("\nStop it with: nexus-bedrock local down")

    @app.command("status")
    def status(
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Show what of the local stack runs (exit 1 unless everything `up` started answers)."""
        records = load_records()
        report = status_report(records)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            for name, entry in report.items():
                state = (
                    "running" if entry["healthy"] else "starting" if entry["running"] else "stopped"
                )
                where = f"  {entry['url']}  pid {entry['pid']}" if entry["running"] else ""
                database = f"  {entry['database']}" if entry.get("database") else ""
                typer.echo(f"{name:<8} {state:<8}{where}{database}")
        up_now = bool(records) and all(
            entry["healthy"] for name, entry in report.items() if name in records
        )
        raise typer.Exit(0 if up_now else 1)

    @app.command("down")
    def down(
        timeout: Annotated[
            float, typer.Option(min=0, help="Seconds to wait before SIGKILL.")
        ] = STOP_TIMEOUT_S,
    ) -> None:
        """Stop what `local up` started (and nothing else); PostgreSQL data is kept."""
        with stack_lock():
            records = load_records()
            remaining = dict(records)
            for name in STOP_ORDER:
                record = remaining.pop(name, None)
                if record is None:
                    continue
                if stop_service(record, timeout):
                    typer.echo(f"stopped  {name} (pid {record.pid})")
                else:
                    typer.echo(f"stale    {name}: pid {record.pid} is not ours any more; forgot it")
                save_records(remaining)
            save_records(remaining)
        if not records:
            typer.echo("The local stack is not running; nothing to stop.")

    @app.command("env")
    def env() -> None:
        """Print `export` lines for the running stack: eval "$(nexus-bedrock local env)"."""
        environment = stack_environment()
        if environment is None:
            typer.echo(
                "error: the local stack is not running: start it with `nexus-bedrock local up`",
                err=True,
            )
            raise typer.Exit(1)
        for line in _export_lines(environment):
            typer.echo(line)
