"""What every flow-running command does before Prefect is imported.

Order of the Prefect API: `PREFECT_API_URL` when set, the local stack when it is up,
else ephemeral mode (with a hint that `nexus-bedrock local up` makes later calls fast).
With the local stack up and no AWS endpoint or credentials configured, the emulator and
the local Nexus are used, so `make demo`'s stack serves every later command.
"""

from __future__ import annotations

import os

import typer

AWS_ENDPOINT = "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"


def _aws_configured() -> bool:
    if os.environ.get(AWS_ENDPOINT):
        return True
    import boto3

    return boto3.session.Session().get_credentials() is not None


def prepare_flow_runtime(*, verbose: bool) -> str:
    """Pick the Prefect API and fill unset AWS/Nexus settings from the local stack.

    Returns:
        "env", "stack" or "ephemeral": where flow runs will be recorded.
    """
    from nexus_bedrock_tasks.local.prefect_api import choose_prefect_api
    from nexus_bedrock_tasks.local.stack import stack_environment

    if not verbose:
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    mode = choose_prefect_api(verbose)
    stack = stack_environment() or {}
    used: list[str] = []
    if AWS_ENDPOINT in stack and not _aws_configured():
        for key, value in stack.items():
            if key.startswith("AWS_"):
                os.environ[key] = value
        used.append(f"Bedrock emulator {stack[AWS_ENDPOINT]}")
    nexus_unset = not (os.environ.get("NEXUS_BASE_URL") or os.environ.get("NEXUS_API_KEY"))
    if "NEXUS_BASE_URL" in stack and nexus_unset:
        os.environ["NEXUS_BASE_URL"] = stack["NEXUS_BASE_URL"]
        os.environ["NEXUS_API_KEY"] = stack["NEXUS_API_KEY"]
        used.append(f"local Nexus {stack['NEXUS_BASE_URL']}")
    if verbose:
        typer.echo(
            f"prefect api: {mode} ({os.environ.get('PREFECT_API_URL', 'ephemeral')})", err=True
        )
        for line in used:
            typer.echo(f"local stack: {line}", err=True)
    return mode
