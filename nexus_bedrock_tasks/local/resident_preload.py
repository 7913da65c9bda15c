"""What the resident runner imports and loads before it forks anyone: a flow command's modules.

`nexus_bedrock_tasks.local.resident` calls `preload` once, at start-up; every child it
forks then finds these modules in ``sys.modules``, Prefect's settings and logging already
configured and botocore's service model loaded. Nothing here starts a thread or an event
loop: ``fork`` copies only the calling thread.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Final

PRELOADED: Final = (
    "prefect",
    "prefect.main",
    "prefect.flow_engine",
    "prefect.task_engine",
    "prefect.client.orchestration",
    "flows.invoke_agent",
    "flows.agent_session",
    "flows.batch_evaluation",
    "nexus_bedrock_tasks.cli",
    "nexus_bedrock_tasks.cli_invoke",
    "nexus_bedrock_tasks.cli_eval",
    "nexus_bedrock_tasks.cli_runtime",
    "nexus_bedrock_tasks.local.prefect_api",
    "nexus_bedrock_tasks.nexus.exporter",
    "nexus_bedrock_tasks.tracing",
    "nexus_bedrock_tasks.results",
    "rich.console",
    "rich.progress",
    # Imported lazily by a flow run: Prefect's engine, anyio, OpenTelemetry, typer's parser.
    "prefect.utilities.visualization",
    "fastapi",
    "starlette.applications",
    "anyio._backends._asyncio",
    "anyio.streams.memory",
    "anyio.streams.stapled",
    "anyio.streams.tls",
    "opentelemetry.metrics",
    "opentelemetry._logs",
    "pydantic.color",
    "encodings.idna",
    "http.cookies",
    "typer._adapters",
    "typer._click.decorators",
)
"""What a flow command would import; the children find it in ``sys.modules``."""

REQUEST_TIMEOUT_S: Final = 5.0
STOP_GRACE_S: Final = 5.0
"""How long a stopping runner still reaps and reports children in flight."""

FORKED_FROM: int | None = None
"""In a child: the pid of the runner it was forked from (`--verbose` says so); else None."""

_ZYGOTE_STREAMS: list[object] = []
"""The runner's own text streams, kept alive in a child: collecting one would close 0/1/2."""


def preload() -> None:
    """Import what flow commands use and load botocore's models, without starting threads.

    Prefect's settings and logging are then configured from this process's environment,
    which `local up` makes a non-verbose command's (``PREFECT_LOGGING_LEVEL=WARNING``), so a
    child configures logging again only when its caller's settings differ.
    """
    for name in PRELOADED:
        importlib.import_module(name)
    from nexus_bedrock_tasks.local.prefect_api import refresh_prefect_settings

    refresh_prefect_settings()
    _prebuild_cli()
    _adopt_stack_aws_defaults()
    from nexus_bedrock_tasks.bedrock import client as bedrock_client

    # The shared session keeps the loaded models for children whose AWS settings match;
    # warmed only when credentials come from the environment (no metadata-service probe).
    warm_up = getattr(bedrock_client, "warm_up", None)
    if warm_up is not None and (
        os.environ.get("AWS_ACCESS_KEY_ID") or os.environ.get("AWS_PROFILE")
    ):
        warm_up()
    import boto3

    # Explicit dummy credentials and endpoint: creating the client must not walk the
    # credential chain (an instance-metadata probe) nor open a connection.
    session = boto3.session.Session(
        aws_access_key_id="resident", aws_secret_access_key="resident", region_name="us-east-1"
    )
    session.client("bedrock-agent-runtime", endpoint_url="http://127.0.0.1:9")


def _adopt_stack_aws_defaults() -> None:
    """Take the AWS settings most children get: the stack's emulator, unless AWS is set up.

    As `cli_runtime.use_local_stack_defaults` decides per command, but from the environment
    alone (walking the credential chain may probe the instance-metadata service) and from
    the recorded emulator, which may still be starting.
    """
    from nexus_bedrock_tasks.local.stack import environment_for, load_records

    configured = ("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME", "AWS_ACCESS_KEY_ID", "AWS_PROFILE")
    bedrock = load_records().get("bedrock")
    if bedrock is None or any(os.environ.get(key) for key in configured):
        return
    os.environ.update(environment_for({"bedrock": bedrock}))


def _prebuild_cli() -> None:
    """Build the click command of the CLI once, here, instead of in every child (~30 ms).

    Typer builds it from the app on each call, through `typer.main.get_command`; each
    child gets its own copy of this one with the fork, so no state is shared between runs.
    """
    import typer.main

    from nexus_bedrock_tasks.cli import app

    built = typer.main.get_command(app)
    build = typer.main.get_command

    def prebuilt(typer_instance: typer.Typer) -> Any:
        return built if typer_instance is app else build(typer_instance)

    setattr(typer.main, "get_command", prebuilt)  # noqa: B010 - a deliberate patch
