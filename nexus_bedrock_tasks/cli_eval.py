"""`nexus-bedrock eval` and `nexus-bedrock session`: batch evaluations and multi-turn sessions."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from nexus_bedrock_tasks.cli_invoke import (
    EXIT_FAILED,
    check_environment,
    configure_tracing,
    fail_usage,
    finish_export,
)
from nexus_bedrock_tasks.exceptions import ConfigError

AgentOption = Annotated[str, typer.Option("--agent-id", help="Bedrock agent id, e.g. DEMO000001.")]
AliasOption = Annotated[str, typer.Option("--alias-id", help="Agent alias id, e.g. TSTALIASID.")]
ToolsOption = Annotated[
    str | None,
    typer.Option("--tools", help="Module (dotted name or .py path) whose @tool functions run."),
]
NoTraceOption = Annotated[bool, typer.Option("--no-trace", help="Do not mirror into Nexus.")]
RegionOption = Annotated[str | None, typer.Option("--region", help="AWS region.")]
EndpointOption = Annotated[
    str | None, typer.Option("--endpoint-url", help="Bedrock Agent Runtime URL.")
]
FlushOption = Annotated[
    float, typer.Option("--flush-timeout", help="Seconds to wait for Nexus at exit.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object.")]
VerboseOption = Annotated[
    bool, typer.Option("--verbose", "-v", help="Show Prefect logs and which API is used.")
]


def _prepare(verbose: bool, tracing: bool, tools: str | None) -> Any:
    """Pick the Prefect API, check AWS/Nexus settings, load tools; install the tracer."""
    from nexus_bedrock_tasks.cli_runtime import prepare_flow_runtime
    from nexus_bedrock_tasks.tools import load_tools

    prepare_flow_runtime(verbose=verbose)
    check_environment(tracing=tracing)
    if tools:
        load_tools(tools)
    return configure_tracing(enabled=tracing)


def _run_flow(flow: Any, parameters: dict[str, Any]) -> Any:
    """Run an async flow to its final state."""

    async def run() -> Any:
        return await flow(**parameters, return_state=True)

    return asyncio.run(run())


def _final(state: Any) -> Any:
    return state.result(raise_on_failure=False)


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Callable[[int, int, int], None]]:
    """A progress bar on stderr fed by the flow's progress listener."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    if not enabled or not console.is_terminal:
        yield lambda done, total, passed: None
        return
    columns = (
        TextColumn("eval"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[passed]} passed"),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        bar = progress.add_task("eval", total=total, passed=0)
        yield lambda done, total, passed: progress.update(
            bar, completed=done, total=total, passed=passed
        )


def eval_command(
    dataset: Annotated[Path, typer.Argument(help="Cases: a .jsonl or .csv file.")],
    agent_id: AgentOption,
    alias_id: AliasOption,
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Cases in flight at once.")
    ] = 8,
    cases_per_task: Annotated[
        int | None,
        typer.Option(
            "--cases-per-task",
            help=(
                "Cases one Prefect task run evaluates, one after another (default: chosen "
                "from the dataset size, 1 for small runs up to 16). Fewer task runs cost "
                "less CPU; 1 gives one task run per case. Each case keeps its own trace."
            ),
        ),
    ] = None,
    baseline: Annotated[
        Path | None, typer.Option("--baseline", help="An earlier run's results file.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Results JSONL (default: the data dir).")
    ] = None,
    min_pass_rate: Annotated[
        float | None,
        typer.Option("--min-pass-rate", min=0, max=1, help="Exit 1 below this (0.9 = 90%)."),
    ] = None,
    scorer: Annotated[
        list[str] | None,
        typer.Option("--scorer", help="Scorer name or import path (repeatable; default all)."),
    ] = None,
    max_latency: Annotated[
        float | None, typer.Option("--max-latency", help="Seconds allowed per case.")
    ] = None,
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Tokens allowed per case.")
    ] = None,
    task_runner: Annotated[
        str, typer.Option("--task-runner", help="async, thread or dask.")
    ] = "async",
    dask_address: Annotated[
        str | None, typer.Option("--dask-address", help="An existing Dask scheduler.")
    ] = None,
    dask_workers: Annotated[
        int | None, typer.Option("--dask-workers", help="LocalCluster worker processes.")
    ] = None,
    fan_out_deployment: Annotated[
        str | None,
        typer.Option(
            "--fan-out-deployment",
            help="Run shards as runs of this deployment (batch-evaluation/NAME).",
        ),
    ] = None,
    shards: Annotated[int, typer.Option("--shards", min=1, help="Shards of a fan-out.")] = 2,
    tools: ToolsOption = None,
    no_trace: NoTraceOption = False,
    region: RegionOption = None,
    endpoint_url: EndpointOption = None,
    flush_timeout: FlushOption = 30.0,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Evaluate an agent on a dataset: one Nexus trace per case, cases grouped into task runs.

    Exit 0 when the pass rate meets --min-pass-rate (or none is set), 1 when it does
    not or the run failed, 2 for bad usage (dataset, baseline, scorer).

    Example: nexus-bedrock eval deployments/datasets/smoke.jsonl --agent-id DEMO000001
    --alias-id TSTALIASID --tools deployments/demo_tools.py --min-pass-rate 0.9
    """
    from nexus_bedrock_tasks.evaluation.baseline import Baseline
    from nexus_bedrock_tasks.evaluation.chunks import check_cases_per_task
    from nexus_bedrock_tasks.evaluation.dataset import Dataset
    from nexus_bedrock_tasks.evaluation.fanout import TASK_RUNNERS
    from nexus_bedrock_tasks.evaluation.scorers import scorer_names

    try:
        if task_runner not in TASK_RUNNERS:
            raise ConfigError(
                f"--task-runner {task_runner!r}: use one of {', '.join(TASK_RUNNERS)}"
            )
        check_cases_per_task(cases_per_task, name="--cases-per-task")
        checked = Dataset(dataset)
        checked.check()
        total = checked.total
        names = scorer_names(scorer)
        if baseline is not None:
            Baseline(baseline)
        exporter = _prepare(verbose, not no_trace, tools)
    except ConfigError as exc:
        raise fail_usage(str(exc)) from None
    from flows.batch_evaluation import batch_evaluation
    from nexus_bedrock_tasks.evaluation.errors import PassRateBelowMinimum
    from nexus_bedrock_tasks.evaluation.progress import progress_listener
    from nexus_bedrock_tasks.evaluation.report import EvalSummary

    parameters: dict[str, Any] = {
        "dataset": str(dataset),
        "agent_id": agent_id,
        "agent_alias_id": alias_id,
        "concurrency": concurrency,
        "cases_per_task": cases_per_task,
        "scorers": names,
        "baseline": str(baseline) if baseline else None,
        "min_pass_rate": min_pass_rate,
        "out": str(out) if out else None,
        "max_latency_s": max_latency,
        "max_tokens": max_tokens,
        "task_runner": task_runner,
        "dask_address": dask_address,
        "dask_workers": dask_workers,
        "fan_out_deployment": fan_out_deployment,
        "shards": shards,
        "region": region,
        "endpoint_url": endpoint_url,
        "tools_module": tools,
    }
    with _progress_bar(total, enabled=True) as listener:
        token = progress_listener.set(listener)
        try:
            state = _run_flow(batch_evaluation, parameters)
        finally:
            progress_listener.reset(token)
    outcome = _final(state)
    finish_export(exporter, flush_timeout)
    summary = outcome.summary if isinstance(outcome, PassRateBelowMinimum) else outcome
    if not isinstance(summary, EvalSummary):
        message = f"{type(outcome).__name__}: {outcome}"
        if as_json:
            typer.echo(json.dumps({"error": message}))
        typer.echo(f"error: evaluation failed: {message}", err=True)
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        typer.echo(json.dumps(summary.cli_json()))
    else:
        _print_summary(summary)
    typer.echo(f"results: {summary.results_path}", err=True)
    if isinstance(outcome, PassRateBelowMinimum):
        typer.echo(f"error: {outcome}", err=True)
        raise typer.Exit(EXIT_FAILED)


def _print_summary(summary: Any) -> None:
    from rich.console import Console

    console = Console()
    console.print(
        f"{summary.passed}/{summary.cases} passed ({summary.pass_rate:.1%})  "
        f"p50 {summary.p50_latency_s or 0:.2f}s  p95 {summary.p95_latency_s or 0:.2f}s  "
        f"tokens {summary.input_tokens}+{summary.output_tokens}  cost_usd {summary.cost_usd}  "
        f"eval_run_id {summary.eval_run_id}",
        highlight=False,
    )
    if summary.baseline is not None:
        comparison = summary.baseline
        console.print(
            f"vs baseline: {comparison.regression_count} regression(s) "
            f"{', '.join(comparison.regressions)}; {comparison.fixed_count} fixed",
            highlight=False,
        )
    sys.stdout.flush()


def _attributes(pairs: list[str]) -> dict[str, str]:
    attributes: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--attribute {pair!r}: write KEY=VALUE, e.g. --attribute tier=gold")
        attributes[key] = value
    return attributes


def session_command(
    turns: Annotated[list[str], typer.Argument(help="The prompts, in order (one per turn).")],
    agent_id: AgentOption,
    alias_id: AliasOption,
    session_id: Annotated[
        str | None, typer.Option("--session-id", help="Use (or continue) this session.")
    ] = None,
    memory_id: Annotated[
        str | None, typer.Option("--memory-id", help="Bedrock memory id across sessions.")
    ] = None,
    attribute: Annotated[
        list[str] | None,
        typer.Option("--attribute", help="Session attribute KEY=VALUE (repeatable)."),
    ] = None,
    keep_session: Annotated[
        bool, typer.Option("--keep-session", help="Do not end the session after the turns.")
    ] = False,
    tools: ToolsOption = None,
    no_trace: NoTraceOption = False,
    region: RegionOption = None,
    endpoint_url: EndpointOption = None,
    flush_timeout: FlushOption = 10.0,
    as_json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run several turns in one Bedrock session; one Nexus trace per turn.

    Exit 0 when every turn was answered, 1 when one failed, 2 for bad usage.

    Example: nexus-bedrock session --agent-id DEMO000001 --alias-id TSTALIASID
    "What is there to see in Lisbon?" "What did I ask earlier?"
    """
    from nexus_bedrock_tasks.invocation import validate_invocation

    try:
        attributes = _attributes(attribute or [])
        for prompt in turns:
            validate_invocation(
                agent_id=agent_id, agent_alias_id=alias_id, prompt=prompt, session_id=session_id
            )
        exporter = _prepare(verbose, not no_trace, tools)
    except ConfigError as exc:
        raise fail_usage(str(exc)) from None
    from flows.agent_session import SessionFailed, SessionTranscript, agent_session

    parameters = {
        "agent_id": agent_id,
        "agent_alias_id": alias_id,
        "turns": turns,
        "session_id": session_id,
        "session_attributes": attributes or None,
        "memory_id": memory_id,
        "end_session": not keep_session,
        "region": region,
        "endpoint_url": endpoint_url,
        "tools_module": tools,
    }
    state = _run_flow(agent_session, parameters)
    outcome = _final(state)
    finish_export(exporter, flush_timeout)
    transcript = outcome.transcript if isinstance(outcome, SessionFailed) else outcome
    if not isinstance(transcript, SessionTranscript):
        message = f"{type(outcome).__name__}: {outcome}"
        if as_json:
            typer.echo(json.dumps({"error": message}))
        typer.echo(f"error: session failed: {message}", err=True)
        raise typer.Exit(EXIT_FAILED)
    if as_json:
        typer.echo(transcript.model_dump_json())
    else:
        _print_transcript(transcript)
    if isinstance(outcome, SessionFailed):
        typer.echo(f"error: {outcome}", err=True)
        raise typer.Exit(EXIT_FAILED)


def _print_transcript(transcript: Any) -> None:
    from rich.console import Console

    console = Console()
    for turn in transcript.turns:
        console.print(f"[bold]> {turn.prompt}[/bold]", highlight=False)
        console.print(turn.text, highlight=False)
        console.print(
            f"[dim]turn={turn.turn} finish_reason={turn.finish_reason} "
            f"tokens={turn.usage.input_tokens}+{turn.usage.output_tokens} "
            f"trace={turn.trace_id or turn.local_trace_id}[/dim]",
            highlight=False,
        )
    console.print(
        f"[dim]session={transcript.session_id} turns={len(transcript.turns)} "
        f"tokens={transcript.usage.total_tokens} cost_usd={transcript.cost_usd} "
        f"ended={transcript.session_ended}[/dim]",
        highlight=False,
    )
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    """Add the `eval` and `session` commands to `app`."""
    app.command("eval")(eval_command)
    app.command("session")(session_command)
