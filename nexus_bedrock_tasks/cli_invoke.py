"""`nexus-bedrock invoke`: one traced agent invocation from the command line."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Annotated, Any

import typer

from nexus_bedrock_tasks.exceptions import ConfigError

EXIT_FAILED = 1
EXIT_USAGE = 2


def fail_usage(message: str) -> typer.Exit:
    """Print one line for a usage error; return the exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(EXIT_USAGE)


def check_environment(*, tracing: bool) -> None:
    """AWS credentials and Nexus URL, checked before any flow run starts.

    Raises:
        ConfigError: naming the setting and the fix.
    """
    import boto3

    from nexus_bedrock_tasks.settings import NexusSettings

    if boto3.session.Session().get_credentials() is None:
        raise ConfigError(
            "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "for real AWS, or run `make demo` for the offline emulator"
        )
    if tracing:
        base_url = NexusSettings().base_url
        if not base_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"NEXUS_BASE_URL {base_url!r} is not an http(s) URL: set it like "
                "https://nexus.keylightdigital.dev or http://127.0.0.1:8765"
            )


def configure_tracing(enabled: bool) -> Any:
    """Install the process tracer; with `enabled=False` nothing is exported or spooled."""
    from nexus_bedrock_tasks.nexus.exporter import NexusExporter, get_exporter
    from nexus_bedrock_tasks.tracing import Tracer, set_tracer

    exporter = get_exporter() if enabled else NexusExporter(enabled=False)
    set_tracer(Tracer(exporter))
    return exporter


def finish_export(exporter: Any, flush_timeout: float) -> None:
    """Wait for Nexus up to `flush_timeout`, then say on stderr what stays in the outbox."""
    remaining = exporter.flush(flush_timeout)
    if remaining:
        typer.echo(
            f"nexus: {remaining} item(s) not yet delivered stay in the outbox; "
            "`nexus-bedrock outbox flush` sends them (also done at the next start)",
            err=True,
        )


def close_export(exporter: Any) -> None:
    """Close without waiting again: what is left is already spooled and reported."""
    from nexus_bedrock_tasks.nexus.exporter import shutdown_exporter

    shutdown_exporter(0.0)
    exporter.close(0.0)


def run_flow(flow_kwargs: dict[str, Any]) -> tuple[Any, Any]:
    """Run the invocation flow; return (InvocationResult | None, exception | None)."""
    from flows.invoke_agent import invoke_agent_flow
    from nexus_bedrock_tasks.results import InvocationFailed

    async def run() -> Any:
        return await invoke_agent_flow(**flow_kwargs, return_state=True)

    state = asyncio.run(run())
    outcome = state.result(raise_on_failure=False)
    if isinstance(outcome, InvocationFailed):
        return outcome.result, outcome
    if isinstance(outcome, BaseException):
        return None, outcome
    return outcome, None


def invoke_command(
    prompt: Annotated[str, typer.Argument(help="What to ask the agent.")],
    agent_id: Annotated[str, typer.Option("--agent-id", help="Bedrock agent id, e.g. DEMO000001.")],
    alias_id: Annotated[str, typer.Option("--alias-id", help="Agent alias id, e.g. TSTALIASID.")],
    session_id: Annotated[
        str | None, typer.Option("--session-id", help="Continue this Bedrock session.")
    ] = None,
    tools: Annotated[
        list[str] | None,
        typer.Option(
            "--tools",
            help="Module (dotted name or .py path) whose @tool functions answer returnControl. "
            "Repeatable.",
        ),
    ] = None,
    no_trace: Annotated[
        bool, typer.Option("--no-trace", help="Do not mirror this invocation into Nexus.")
    ] = False,
    region: Annotated[str | None, typer.Option("--region", help="AWS region.")] = None,
    endpoint_url: Annotated[
        str | None,
        typer.Option(
            "--endpoint-url",
            help="Bedrock Agent Runtime URL; default AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME.",
        ),
    ] = None,
    max_rounds: Annotated[
        int | None, typer.Option("--max-rounds", help="Most returnControl rounds.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Stop when tokens exceed this.")
    ] = None,
    max_cost: Annotated[
        float | None, typer.Option("--max-cost", help="Stop when cost (USD) exceeds this.")
    ] = None,
    flush_timeout: Annotated[
        float, typer.Option("--flush-timeout", help="Seconds to wait for Nexus at exit.")
    ] = 10.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show Prefect logs and which API is used.")
    ] = False,
) -> None:
    """Invoke a Bedrock Agent as a Prefect flow and trace it into Nexus.

    Exit 0 when the agent answered (a guardrail block is an answer), 1 when the
    invocation failed, 2 for bad usage.

    Example: nexus-bedrock invoke --agent-id DEMO000001 --alias-id TSTALIASID
    --tools examples.weather_tools "What's the weather in Paris?"
    """
    from nexus_bedrock_tasks.cli_runtime import choose_flow_api, use_local_stack_defaults
    from nexus_bedrock_tasks.invocation import validate_invocation
    from nexus_bedrock_tasks.tools import load_tools

    try:
        validate_invocation(
            agent_id=agent_id, agent_alias_id=alias_id, prompt=prompt, session_id=session_id
        )
        for module in tools or []:
            load_tools(module)
        use_local_stack_defaults(verbose=verbose)
        check_environment(tracing=not no_trace)
    except ConfigError as exc:
        raise fail_usage(str(exc)) from None
    choose_flow_api(verbose=verbose)
    exporter = configure_tracing(enabled=not no_trace)
    flow_kwargs: dict[str, Any] = {
        "agent_id": agent_id,
        "agent_alias_id": alias_id,
        "prompt": prompt,
        "session_id": session_id,
        "max_return_control_rounds": max_rounds,
        "max_total_tokens": max_tokens,
        "max_cost_usd": max_cost,
        "region": region,
        "endpoint_url": endpoint_url,
    }
    result, error = run_flow(flow_kwargs)
    finish_export(exporter, flush_timeout)
    if result is not None and result.trace_id is None and result.local_trace_id:
        result.trace_id = exporter.nexus_trace_id(result.local_trace_id, timeout=0)
    close_export(exporter)
    if result is None:
        message = f"{type(error).__name__}: {error}"
        if as_json:
            typer.echo(json.dumps({"error": message}))
        typer.echo(f"error: invocation failed: {message}", err=True)
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        typer.echo(json.dumps(result.cli_json(), ensure_ascii=False))
    else:
        _print_result(result)
    if error is not None:
        typer.echo(f"error: invocation failed: {result.error}", err=True)
        raise typer.Exit(EXIT_FAILED)


def _print_result(result: Any) -> None:
    from rich.console import Console

    console = Console()
    console.print(result.text)
    console.print(
        f"[dim]finish_reason={result.finish_reason}  tokens={result.usage.input_tokens}+"
        f"{result.usage.output_tokens}  cost_usd={result.cost_usd}  "
        f"session={result.session_id}  trace={result.trace_id or result.local_trace_id}[/dim]",
        highlight=False,
    )
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the `invoke` command to `app`."""
    app.command("invoke")(invoke_command)
