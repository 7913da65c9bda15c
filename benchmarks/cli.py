"""`cli_overhead_s` (issue 10): what a user waits for beyond the agent itself.

Median wall time of ``nexus-bedrock invoke --json`` (a fresh process: the launcher, which
hands the command to the stack's resident runner — a pre-imported process that forks a
child per call — then the Prefect flow run and the export flush at exit) with the local
stack up, minus the median of a plain boto3 invoke + drain of the same emulator agent and
session latency, interleaved. ``raw.runner`` says which process ran the calls.
"""

from __future__ import annotations

import json
import subprocess
import time

from benchmarks.figures import AGENT_ALIAS_ID, AGENT_ID, PROMPT, Figure, Sizes, missing
from benchmarks.harness import Knobs, Services, nexus_bedrock_command
from benchmarks.invocation import Invoker, interleaved
from benchmarks.stats import Measure, describe, median, walls

CLI_TIMEOUT_S = 120.0


def _invoke_argv(session_id: str, *options: str) -> list[str]:
    return [
        *nexus_bedrock_command(),
        "invoke",
        "--json",
        *options,
        "--agent-id",
        AGENT_ID,
        "--alias-id",
        AGENT_ALIAS_ID,
        "--session-id",
        session_id,
        PROMPT,
    ]


def runner_used(services: Services, knobs: Knobs, sizes: Sizes) -> str:
    """The ``runner:`` line of one ``--verbose`` call: the resident runner or the process."""
    assert services.cli_env is not None
    argv = _invoke_argv(knobs.new_session(sizes.step_latency_ms), "--verbose")
    done = subprocess.run(
        argv, env=services.cli_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    lines = [line for line in done.stderr.splitlines() if line.startswith("runner:")]
    return lines[0] if lines else f"unknown (exit {done.returncode})"


def cli_call(services: Services, knobs: Knobs, sizes: Sizes) -> Measure:
    """Seconds of one ``nexus-bedrock invoke --json`` of the benchmark agent.

    Raises:
        RuntimeError: it exited non-zero or its stdout was not the JSON result.
    """
    assert services.cli_env is not None
    session_id = knobs.new_session(sizes.step_latency_ms)
    argv = _invoke_argv(session_id)
    cpu, started = time.process_time(), time.perf_counter()
    done = subprocess.run(
        argv, env=services.cli_env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S
    )
    elapsed = time.perf_counter() - started
    cpu_s = time.process_time() - cpu
    if done.returncode != 0:
        raise RuntimeError(f"exit {done.returncode}: {done.stderr.strip()[-600:]}")
    result = json.loads(done.stdout)
    if result.get("session_id") != session_id:
        raise RuntimeError(f"unexpected answer: {done.stdout[:300]}")
    return Measure(elapsed, cpu_s)


def cli_figure(services: Services, invoker: Invoker, sizes: Sizes) -> Figure:
    """Median CLI call − median plain call, in seconds."""
    if services.cli_env is None:
        return missing("cli_overhead_s", services.cli_reason or "the local stack is not up")
    try:
        samples = interleaved(
            {
                "plain": invoker.plain,
                "cli": lambda: cli_call(services, invoker.knobs, sizes),
            },
            sizes.cli_calls,
            min(sizes.warmup, 1),
        )
        runner = runner_used(services, invoker.knobs, sizes)
    except (RuntimeError, ValueError, subprocess.SubprocessError) as exc:
        return missing("cli_overhead_s", f"`nexus-bedrock invoke --json` failed: {exc}")
    cli, plain = median(walls(samples["cli"])), median(walls(samples["plain"]))
    overhead = round(cli - plain, 3)
    return Figure(
        key="cli_overhead_s",
        value=overhead,
        measured=f"`nexus-bedrock invoke --json` {cli:.3f} s (median)",
        baseline=f"plain boto3 invoke + drain {plain:.3f} s (median)",
        ratio=round(cli / plain, 3),
        raw={
            "cli_s": describe(walls(samples["cli"])),
            "plain_call_s": describe(walls(samples["plain"])),
            "prefect": services.prefect,
            "runner": runner,
            "command": " ".join(["nexus-bedrock", "invoke", "--json", "--agent-id", AGENT_ID]),
        },
    )
