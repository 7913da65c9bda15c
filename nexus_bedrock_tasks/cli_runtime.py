"""What every flow-running command does before Prefect is imported.

Order of the Prefect API: `PREFECT_API_URL` when set, the local stack when it is up,
else ephemeral mode (with a hint that `nexus-bedrock local up` makes later calls fast).
With the local stack up and no AWS endpoint or credentials configured, the emulator and
the local Nexus are used, so `make demo`'s stack serves every later command.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

AWS_ENDPOINT = "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"


def _aws_configured() -> bool:
    if os.environ.get(AWS_ENDPOINT):
        return True
    import boto3

    return boto3.session.Session().get_credentials() is not None


def use_local_stack_defaults(*, verbose: bool = False) -> None:
    """Point unset AWS and Nexus settings at the local stack when it is up (prints nothing
    unless `verbose`)."""
    from nexus_bedrock_tasks.local.stack import stack_environment

    stack = stack_environment() or {}
    if AWS_ENDPOINT in stack and not _aws_configured():
        for key, value in stack.items():
            if key.startswith("AWS_"):
                os.environ[key] = value
        if verbose:
            typer.echo(f"local stack: Bedrock emulator {stack[AWS_ENDPOINT]}", err=True)
    nexus_unset = not (os.environ.get("NEXUS_BASE_URL") or os.environ.get("NEXUS_API_KEY"))
    if "NEXUS_BASE_URL" in stack and nexus_unset:
        os.environ["NEXUS_BASE_URL"] = stack["NEXUS_BASE_URL"]
        os.environ["NEXUS_API_KEY"] = stack["NEXUS_API_KEY"]
        if verbose:
            typer.echo(f"local stack: local Nexus {stack['NEXUS_BASE_URL']}", err=True)


def runner_description() -> str:
    """Which process runs this command: a child of the resident runner, or this one."""
    # Looked up, not imported: only a child of the runner has the module loaded.
    resident = sys.modules.get("nexus_bedrock_tasks.local.resident")
    runner_pid = getattr(resident, "FORKED_FROM", None)
    if runner_pid is not None:
        return f"runner: the resident runner (pid {runner_pid}), in its child pid {os.getpid()}"
    return f"runner: this process (pid {os.getpid()}), not the resident runner"


def choose_flow_api(*, verbose: bool) -> str:
    """Pick the Prefect API (before Prefect is imported); quiet Prefect unless `verbose`.

    With `verbose`, also say which process runs the command (`runner_description`).

    Returns:
        "env", "stack" or "ephemeral": where flow runs will be recorded.
    """
    from nexus_bedrock_tasks.local.prefect_api import choose_prefect_api

    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        # At exit Prefect's events thread may say "Still processing items: N items
        # remaining..." while it sends the run's last events: progress, not a problem.
        logging.getLogger("EventsWorker").setLevel(logging.ERROR)
    mode = choose_prefect_api(verbose)
    if verbose:
        typer.echo(runner_description(), err=True)
        api_url = os.environ.get("PREFECT_API_URL", "a temporary server")
        typer.echo(f"prefect api: {mode} ({api_url})", err=True)
    return mode


def prepare_flow_runtime(*, verbose: bool) -> str:
    """`use_local_stack_defaults` then `choose_flow_api`."""
    use_local_stack_defaults(verbose=verbose)
    return choose_flow_api(verbose=verbose)
