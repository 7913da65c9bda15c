"""`tracing_overhead_ratio`: our tracing cost per invocation ÷ OpenInference's.

Ours: (traced flow − the same flow with export off), from the rounds of
`benchmarks.invocation`. Theirs: (instrumented call − raw call), measured by
`benchmarks.openinference` in a child process, because its instrumentor patches every
botocore client made after it is installed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from benchmarks.figures import Figure, Sizes
from benchmarks.harness import Services
from benchmarks.invocation import Invoker, cost_ms
from benchmarks.stats import Measure, cpus, describe, walls

OPENINFERENCE_TIMEOUT_S = 600


def tracing_figure(
    samples: dict[str, list[Measure]], invoker: Invoker, in_tracer_ms: float
) -> Figure:
    """Our export cost per invocation ÷ OpenInference's, both in ms of wall time.

    A flow run's wall time varies by tens of ms on a busy machine, more than the cost
    measured, so two steadier cross-checks come with it: the wall time the flow spends
    inside tracer calls (ours) against OpenInference's added wall time, and the CPU time
    of tracing one invocation, delivery included (ours: a burst through the tracer, no
    Prefect) against OpenInference's added CPU time, export included.
    """
    from benchmarks.export import exporter_burst

    services, sizes = invoker.services, invoker.sizes
    traced, untraced = samples["traced"], samples["untraced"]
    ours = cost_ms(walls(traced), walls(untraced))
    burst = exporter_burst(services, invoker.workdir, max(3, 5 * sizes.rounds))
    raw: dict[str, Any] = {
        "ours_wall": ours,
        "ours_flow_cpu": cost_ms(cpus(traced), cpus(untraced)),
        "ours_in_tracer_calls_ms": round(in_tracer_ms, 2),
        "ours_cpu_per_invocation_ms": burst["cpu_ms_per_invocation"],
        "untraced_flow_s": describe(walls(untraced)),
        "traced_flow_s": describe(walls(traced)),
    }
    try:
        theirs = run_openinference(services, sizes)
    except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
        return Figure(
            key="tracing_overhead_ratio",
            value=None,
            raw=raw,
            reason=f"the OpenInference baseline could not run: {exc}",
        )
    oi_wall = cost_ms(theirs["instrumented"], theirs["raw"])
    oi_cpu = cost_ms(theirs["instrumented_cpu"], theirs["raw_cpu"])
    positive = oi_wall["ms"] > 0 and oi_cpu["ms"] > 0
    raw.update(
        {
            "openinference_wall": oi_wall,
            "openinference_cpu": oi_cpu,
            "in_tracer_wall_ratio": round(in_tracer_ms / oi_wall["ms"], 3) if positive else None,
            "cpu_ratio": (
                round(burst["cpu_ms_per_invocation"] / oi_cpu["ms"], 3) if positive else None
            ),
            "openinference_call_s": describe(theirs["instrumented"]),
            "raw_call_s": describe(theirs["raw"]),
            "openinference_spans_exported": theirs["spans_exported"],
            "openinference_export_failures": theirs["export_failures"],
            "openinference_versions": theirs["versions"],
        }
    )
    if oi_wall["ms"] <= 0:
        return Figure(
            key="tracing_overhead_ratio",
            value=None,
            raw=raw,
            reason=(
                f"OpenInference's cost measured {oi_wall['ms']:.2f} ms (≤ 0: below the noise "
                "of this run), so no ratio can be formed"
            ),
        )
    ratio = round(ours["ms"] / oi_wall["ms"], 3)
    value_range = (
        round(ours["ci90_low_ms"] / oi_wall["ms"], 3),
        round(ours["ci90_high_ms"] / oi_wall["ms"], 3),
    )
    note = (
        f"90 % interval of the ratio {value_range[0]}…{value_range[1]}; steadier "
        f"cross-checks: in-tracer wall {raw['in_tracer_wall_ratio']}, CPU {raw['cpu_ratio']}"
    )
    return Figure(
        key="tracing_overhead_ratio",
        value=ratio,
        measured=(
            f"ours {ours['ms']:.1f} ms (traced − export-off flow, median of paired rounds; "
            "90 % CI "
            f"{ours['ci90_low_ms']:.0f}…{ours['ci90_high_ms']:.0f})"
        ),
        baseline=(
            f"OpenInference {oi_wall['ms']:.1f} ms (instrumented − raw call, median of paired "
            "rounds; 90 % CI "
            f"{oi_wall['ci90_low_ms']:.0f}…{oi_wall['ci90_high_ms']:.0f})"
        ),
        ratio=ratio,
        raw=raw,
        note=note,
        value_range=value_range,
    )


def run_openinference(services: Services, sizes: Sizes) -> dict[str, Any]:
    """Run `benchmarks.openinference` in a child process; its JSON answer.

    Raises:
        RuntimeError: it failed (its stderr says why) or printed no JSON.
    """
    argv = [
        sys.executable,
        "-m",
        "benchmarks.openinference",
        "--bedrock-url",
        services.bedrock_url,
        "--nexus-url",
        services.nexus_url,
        "--api-key",
        services.api_key,
        "--rounds",
        str(sizes.rounds),
        "--warmup",
        str(sizes.warmup),
        "--step-latency-ms",
        str(sizes.step_latency_ms),
    ]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=OPENINFERENCE_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-800:] or f"exit {done.returncode}")
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer
