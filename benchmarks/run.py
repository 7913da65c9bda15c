"""`make bench`: ``python -m benchmarks.run [--quick] [--only NAME,...]``.

A full run (no option) starts the services (`harness.subprocess_services`), measures every
figure with its baseline, and writes benchmarks/results.json and the generated section of
BENCHMARKS.md. ``--quick`` (smaller sizes) and ``--only`` write their results.json to a
temporary directory, printed at the end, unless ``--results`` names a file; they touch
BENCHMARKS.md only with ``--markdown``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.figures import FULL, QUICK, TARGETS, Figure, Sizes
from benchmarks.harness import ROOT, LoopThread, Services, subprocess_services

RESULTS_PATH = ROOT / "benchmarks" / "results.json"
MARKDOWN_PATH = ROOT / "BENCHMARKS.md"
DEFAULT_HOME = Path(tempfile.gettempdir()) / "nexus-bedrock-bench"


def configure_process(workdir: Path) -> None:
    """Settings of this process, before anything imports Prefect: quiet, private spools."""
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ["AWS_ACCESS_KEY_ID"] = "test"
    os.environ["AWS_SECRET_ACCESS_KEY"] = "test"
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"
    os.environ["NEXUS_BEDROCK_OUTBOX"] = str(workdir / "outbox.sqlite3")
    os.environ["NEXUS_BEDROCK_TOOL_LEDGER"] = str(workdir / "tool-ledger.sqlite3")


def _timed_step(
    name: str, step: Callable[[], list[Figure]], log: Callable[[str], None]
) -> list[Figure]:
    started = time.monotonic()
    log(f"bench: {name} ...")
    figures = step()
    summary = ", ".join(f"{f.key}={f.value}" for f in figures)
    log(f"bench: {name} done in {time.monotonic() - started:.0f} s: {summary}")
    return figures


def run_benchmarks(
    services: Services,
    sizes: Sizes,
    only: set[str],
    workdir: Path,
    log: Callable[[str], None] = print,
    rss_direct: bool = False,
) -> list[Figure]:
    """Measure the figures in `only` against `services`; one `Figure` each, in report order."""
    from benchmarks.batch import batch_figures
    from benchmarks.cli import cli_figure
    from benchmarks.export import export_figure
    from benchmarks.invocation import Invoker, invocation_figures
    from benchmarks.parse import parse_figure

    figures: list[Figure] = []
    if "parse_ratio" in only:
        figures += _timed_step("parse", lambda: [parse_figure(sizes)], log)
    invocation_keys = {"overhead_ratio", "tracing_overhead_ratio", "slow_nexus_ratio"}
    if only & (invocation_keys | {"cli_overhead_s"}):
        loop = LoopThread()
        loop.share_prefect_clients()
        invoker = Invoker(services, loop, workdir, sizes)
        try:
            figures += _timed_step("invocation", lambda: invocation_figures(invoker, only), log)
            if "cli_overhead_s" in only:
                figures += _timed_step("cli", lambda: [cli_figure(services, invoker, sizes)], log)
        finally:
            counts = invoker.close()
            loop.close()
        for figure in figures:
            if figure.key in invocation_keys:
                figure.raw["exporters"] = counts
    if "export_spans_per_s" in only:
        figures += _timed_step("export", lambda: [export_figure(services, workdir, sizes)], log)
    if only & {"batch_efficiency", "eval_rss_mb"}:
        figures += _timed_step(
            "batch", lambda: batch_figures(services, workdir, sizes, only, rss_direct), log
        )
    order = list(TARGETS)
    return sorted(figures, key=lambda figure: order.index(figure.key))


def _parse_only(value: str | None) -> set[str]:
    if not value:
        return set(TARGETS)
    names = {name.strip() for name in value.split(",") if name.strip()}
    unknown = names - set(TARGETS)
    if unknown:
        raise SystemExit(f"unknown figure(s) {sorted(unknown)}; known: {', '.join(TARGETS)}")
    return names


def main(argv: list[str] | None = None) -> int:
    """Command line of `make bench`."""
    parser = argparse.ArgumentParser(description="Measure the figures of BENCHMARKS.md.")
    parser.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    parser.add_argument("--only", help=f"comma-separated figures: {', '.join(TARGETS)}")
    parser.add_argument(
        "--rss-direct",
        action="store_true",
        help="measure eval_rss_mb on all 10,000 cases (~5 min more) instead of extrapolating",
    )
    parser.add_argument("--results", type=Path, help="where to write results.json")
    parser.add_argument("--markdown", type=Path, help="BENCHMARKS.md to update")
    parser.add_argument(
        "--home",
        type=Path,
        default=DEFAULT_HOME,
        help="data directory of the benchmark's local stack (kept: PostgreSQL is set up once)",
    )
    args = parser.parse_args(argv)
    from benchmarks.report import environment, results_json, write_markdown, write_results

    only = _parse_only(args.only)
    partial = args.quick or args.only is not None
    sizes = QUICK if args.quick else FULL
    started = time.monotonic()
    env = environment()
    with tempfile.TemporaryDirectory(prefix="nexus-bedrock-bench-") as temporary:
        workdir = Path(temporary)
        configure_process(workdir)
        with subprocess_services(args.home) as services:
            print(f"bench: services up in {time.monotonic() - started:.0f} s ({services.prefect})")
            figures = run_benchmarks(services, sizes, only, workdir, rss_direct=args.rss_direct)
        mode = ("quick" if args.quick else "full") + (f", only {args.only}" if args.only else "")
        document = results_json(figures, env, mode, services.prefect, services.notes)
        document["environment"]["elapsed_s"] = round(time.monotonic() - started)
        results = args.results or (Path(temporary) / "results.json" if partial else RESULTS_PATH)
        if results.parent == Path(temporary):
            results = Path(tempfile.mkdtemp(prefix="nexus-bedrock-bench-results-")) / results.name
        write_results(results, document)
        markdown = args.markdown or (None if partial else MARKDOWN_PATH)
        if markdown is not None:
            write_markdown(markdown, document)
    for figure in figures:
        verdict = {True: "met", False: "MISSED", None: "inconclusive"}[figure.met]
        if figure.value is None:
            verdict = "not measured"
        detail = figure.reason or f"{figure.measured} vs {figure.baseline}"
        print(f"{figure.key:24} {figure.value!s:>10}  target {figure.target}  {verdict}: {detail}")
    print(f"bench: results in {results}" + (f", tables in {markdown}" if markdown else ""))
    print(f"bench: total {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
