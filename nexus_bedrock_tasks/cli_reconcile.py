"""`nexus-bedrock reconcile`: end traces of runs killed before their hooks could run."""

from __future__ import annotations

import json
from typing import Annotated

import typer


def reconcile_command(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    flush_timeout: Annotated[
        float, typer.Option("--flush-timeout", help="Seconds to wait for Nexus.")
    ] = 10.0,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """End the Nexus traces of runs whose process died without a hook (e.g. SIGKILL).

    Each such run's state is read from Prefect (a run still shown as running is marked
    Crashed), then its trace gets a `summary` span and its final status.

    Example: nexus-bedrock reconcile --json
    """
    from nexus_bedrock_tasks.cli_runtime import prepare_flow_runtime

    prepare_flow_runtime(verbose=verbose)
    from nexus_bedrock_tasks.cli_invoke import close_export, configure_tracing, finish_export
    from nexus_bedrock_tasks.ledger import get_ledger
    from nexus_bedrock_tasks.reconcile import prefect_state_lookup, reconcile
    from nexus_bedrock_tasks.settings import BedrockTasksSettings
    from nexus_bedrock_tasks.tracing import get_tracer

    exporter = configure_tracing(enabled=True)
    done = reconcile(
        get_ledger(BedrockTasksSettings().tool_ledger), get_tracer(), prefect_state_lookup()
    )
    finish_export(exporter, flush_timeout)
    close_export(exporter)
    if as_json:
        typer.echo(json.dumps({"reconciled": [item.as_dict() for item in done]}))
        return
    if not done:
        typer.echo("nothing to reconcile: no trace of a dead run is open")
    for item in done:
        typer.echo(
            f"ended trace {item.trace} as {item.status} "
            f"(flow run {item.flow_run_id}: {item.prefect_state or 'unknown to Prefect'})"
        )


def register(app: typer.Typer) -> None:
    """Add the `reconcile` command to `app`."""
    app.command("reconcile")(reconcile_command)
