"""`batch_efficiency` and `eval_rss_mb`: the batch evaluation flow at scale.

Each evaluation runs in a child process (`benchmarks.batch_child`) against the same
emulator and local Nexus, with the Prefect API of this run.

- `batch_efficiency`: `batch_cases` cases at `batch_concurrency`, every step taking
  `batch_step_latency_ms`; cases/s ÷ the ideal, concurrency ÷ the per-case latency of a
  plain boto3 call of the same case measured in the same child. The child also measures
  the machine's ceiling, plain calls per second at the same concurrency (the emulator
  shares the cores), shown next to the figure: the ideal assumes free cores.
- `eval_rss_mb`: the child's peak RSS. A 10,000-case run does not fit in `make bench`'s
  10 minutes on 2 cores (the flow does ~10 cases/s here), so the full run measures the
  peak RSS at two sizes (the efficiency run and a quarter of it), and extrapolates
  linearly to `rss_cases` (growth below zero counts as zero). ``--rss-direct`` measures
  `rss_cases` cases directly instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.figures import Figure, Sizes, missing
from benchmarks.harness import Services

BATCH_MODULE = "flows.batch_evaluation"
CHILD_TIMEOUT_S = 3600


def run_child(
    services: Services, workdir: Path, cases: int, concurrency: int, step_latency_ms: float
) -> dict[str, Any]:
    """One evaluation in a child process; its JSON answer.

    Raises:
        RuntimeError: the child failed (its stderr says why).
    """
    argv = [
        sys.executable,
        "-m",
        "benchmarks.batch_child",
        "--bedrock-url",
        services.bedrock_url,
        "--nexus-url",
        services.nexus_url,
        "--api-key",
        services.api_key,
        "--workdir",
        str(workdir),
        "--cases",
        str(cases),
        "--concurrency",
        str(concurrency),
        "--step-latency-ms",
        str(step_latency_ms),
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=_child_environment()
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(done.stderr.strip()[-800:] or f"exit {done.returncode}")
    answer: dict[str, Any] = json.loads(lines[-1])
    return answer


def _child_environment() -> dict[str, str]:
    """This process's environment, with the Prefect API its flows use (which may come from
    a settings context, as in Prefect's test harness, rather than the environment)."""
    from prefect.settings import PREFECT_API_URL

    environment = dict(os.environ)
    api_url = PREFECT_API_URL.value()
    if api_url:
        environment["PREFECT_API_URL"] = api_url
    return environment


def efficiency_figure(run: dict[str, Any], sizes: Sizes) -> Figure:
    """Cases/s ÷ (concurrency ÷ plain per-case latency), with the machine's ceiling."""
    ideal = sizes.batch_concurrency / run["plain_case_median_s"]
    efficiency = round(run["cases_per_s"] / ideal, 3)
    ceiling = run["plain_concurrent"]["cases_per_s"]
    return Figure(
        key="batch_efficiency",
        value=efficiency,
        measured=(
            f"{run['cases']} cases at concurrency {sizes.batch_concurrency}: "
            f"{run['cases_per_s']:.1f} cases/s"
        ),
        baseline=(
            f"ideal {ideal:.1f} cases/s = {sizes.batch_concurrency} ÷ plain case "
            f"{run['plain_case_median_s']:.3f} s"
        ),
        ratio=efficiency,
        raw={
            "run": run,
            "ideal_cases_per_s": round(ideal, 2),
            "ceiling_cases_per_s": ceiling,
            "ceiling_efficiency": round(ceiling / ideal, 3),
            "of_ceiling": round(run["cases_per_s"] / ceiling, 3),
        },
        note=(
            f"plain boto3 calls at concurrency {sizes.batch_concurrency} reach "
            f"{ceiling:.1f} cases/s here ({ceiling / ideal:.2f} of the ideal); the flow "
            f"reaches {run['cases_per_s'] / ceiling:.2f} of that"
        ),
    )


def rss_figure(large: dict[str, Any], small: dict[str, Any] | None, target_cases: int) -> Figure:
    """Peak RSS at `target_cases`: measured on `large`, or extrapolated from `small` too.

    The growth per case comes from the RSS sampled during the flow (the process-wide peak
    may be set by imports before the flow starts); the figure is the process's peak.
    """
    peak = max(large["peak_rss_mb"], large["rss_peak_during_flow_mb"])
    per_case = 0.0
    if small is not None:
        growth = max(0.0, large["rss_peak_during_flow_mb"] - small["rss_peak_during_flow_mb"])
        per_case = growth / max(1, large["cases"] - small["cases"])
    extrapolated = small is not None and large["cases"] < target_cases
    value = round(peak + per_case * max(0, target_cases - large["cases"]), 1)
    how = (
        f"extrapolated from {small['cases']} and {large['cases']} cases"
        if small is not None and extrapolated
        else f"measured on {large['cases']} cases"
    )
    return Figure(
        key="eval_rss_mb",
        value=value,
        measured=f"peak RSS of a {target_cases:,}-case evaluation {value:.0f} MiB ({how})",
        baseline=(
            f"RSS of the same process before the flow (imports done) "
            f"{large['rss_before_flow_mb']:.0f} MiB"
        ),
        ratio=round(value / large["rss_before_flow_mb"], 3),
        raw={
            "extrapolated": extrapolated,
            "mib_per_1000_cases": round(1000 * per_case, 2),
            "large_run": large,
            "small_run": small,
        },
    )


def batch_figures(
    services: Services, workdir: Path, sizes: Sizes, only: set[str], rss_direct: bool = False
) -> list[Figure]:
    """The batch figures in `only`."""
    keys = [key for key in ("batch_efficiency", "eval_rss_mb") if key in only]
    if importlib.util.find_spec(BATCH_MODULE) is None:
        reason = "flows/batch_evaluation.py does not exist yet (built concurrently)"
        return [missing(key, reason) for key in keys]
    figures: list[Figure] = []
    try:
        efficiency_run = run_child(
            services,
            workdir / "batch",
            sizes.batch_cases,
            sizes.batch_concurrency,
            sizes.batch_step_latency_ms,
        )
        if "batch_efficiency" in only:
            figures.append(efficiency_figure(efficiency_run, sizes))
        if "eval_rss_mb" in only:
            large, small = efficiency_run, None
            if rss_direct and sizes.rss_cases > sizes.batch_cases:
                large = run_child(
                    services,
                    workdir / "rss-large",
                    sizes.rss_cases,
                    sizes.batch_concurrency,
                    sizes.batch_step_latency_ms,
                )
            elif sizes.rss_cases > sizes.batch_cases:
                small = run_child(
                    services,
                    workdir / "rss-small",
                    max(1, sizes.batch_cases // 4),
                    sizes.batch_concurrency,
                    sizes.batch_step_latency_ms,
                )
            figures.append(rss_figure(large, small, sizes.rss_cases))
    except (RuntimeError, subprocess.SubprocessError, ValueError) as exc:
        reason = f"the batch evaluation failed: {exc}"
        done = {figure.key for figure in figures}
        figures += [missing(key, reason) for key in keys if key not in done]
    return figures
