"""One batch evaluation in a process of its own (``python -m benchmarks.batch_child``).

Its own process, so that its peak RSS is the evaluation's and nothing else's. Writes a
JSONL dataset of `--cases` copies of the benchmark case (each in its own Bedrock session,
every step of which takes `--step-latency-ms`), measures the plain per-case latency of
the same call (the baseline) and how many plain calls per second this machine serves at
the same concurrency (the ceiling: the emulator and the client share its cores with the
flow), runs `flows.batch_evaluation.batch_evaluation` traced into the given local Nexus,
and prints one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.figures import AGENT_ALIAS_ID, AGENT_ID, PROMPT
from benchmarks.harness import Knobs, Services, plain_call, plain_client
from benchmarks.stats import median

BASELINE_CALLS = 5
CEILING_ROUNDS = 10


def write_dataset(path: Path, cases: int, knobs: Knobs, step_latency_ms: float) -> None:
    """`cases` copies of the benchmark case, each in its own session of that latency."""
    with path.open("w") as out:
        for number in range(cases):
            case: dict[str, Any] = {"id": f"case-{number}", "prompt": PROMPT}
            if step_latency_ms > 0:
                case["session_id"] = knobs.new_session(step_latency_ms)
            out.write(json.dumps(case) + "\n")


def _plain_call(client: Any, session_id: str) -> float:
    """Seconds of one plain invoke + drain of the benchmark case."""
    started = time.perf_counter()
    plain_call(client, session_id)
    return time.perf_counter() - started


def plain_latency(services: Services, knobs: Knobs, step_latency_ms: float) -> list[float]:
    """Seconds of a few plain invoke + drain calls of the benchmark case, one at a time."""
    client = plain_client(services.bedrock_url)
    samples = [
        _plain_call(client, knobs.new_session(step_latency_ms)) for _ in range(BASELINE_CALLS)
    ]
    client.close()
    return samples


def plain_throughput(
    services: Services, knobs: Knobs, cases: int, concurrency: int, step_latency_ms: float
) -> dict[str, float]:
    """Plain calls per second at `concurrency` (threads sharing one client): the most any
    evaluation can reach on this machine, whose cores also run the emulator."""
    import boto3
    from botocore.config import Config

    calls = max(1, min(cases, CEILING_ROUNDS * concurrency))
    sessions = [knobs.new_session(step_latency_ms) for _ in range(calls)]
    client = boto3.client(
        "bedrock-agent-runtime",
        endpoint_url=services.bedrock_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(max_pool_connections=concurrency + 2),
    )
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(lambda session: _plain_call(client, session), sessions))
    elapsed = time.perf_counter() - started
    client.close()
    return {
        "calls": calls,
        "cases_per_s": round(calls / elapsed, 2),
        "median_latency_s": round(median(latencies), 4),
    }


def peak_rss_mb() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident set size now, in MiB (Linux; else the peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024 / 1024


class RssSampler:
    """Samples the current RSS every `interval` seconds: the peak *during* the flow (the
    process-wide peak may be set earlier, by imports)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.peak_mb = current_rss_mb()
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak_mb = max(self.peak_mb, current_rss_mb())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, current_rss_mb())


def main(argv: list[str] | None = None) -> int:
    """Command line: run one evaluation and print its figures as one JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bedrock-url", required=True)
    parser.add_argument("--nexus-url", required=True)
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--cases", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--step-latency-ms", type=float, default=0)
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    os.environ.update(
        {
            "NEXUS_BASE_URL": args.nexus_url,
            "NEXUS_API_KEY": args.api_key,
            "NEXUS_BEDROCK_OUTBOX": str(args.workdir / "outbox.sqlite3"),
            "NEXUS_BEDROCK_TOOL_LEDGER": str(args.workdir / "tool-ledger.sqlite3"),
            "NEXUS_BEDROCK_EVAL_RESULTS_DIR": str(args.workdir / "results"),
        }
    )
    services = Services(
        bedrock_url=args.bedrock_url,
        nexus_url=args.nexus_url,
        api_key=args.api_key,
        faults_nexus_url=args.nexus_url,
        prefect="inherited",
    )
    knobs = Knobs(services)
    baseline = plain_latency(services, knobs, args.step_latency_ms)
    ceiling = plain_throughput(services, knobs, args.cases, args.concurrency, args.step_latency_ms)
    dataset = args.workdir / "dataset.jsonl"
    write_dataset(dataset, args.cases, knobs, args.step_latency_ms)
    knobs.close()
    from flows.batch_evaluation import batch_evaluation

    run_id = uuid.uuid4().hex
    rss_before = current_rss_mb()
    started = time.perf_counter()
    with RssSampler() as sampler:
        summary = asyncio.run(
            batch_evaluation(
                str(dataset),
                AGENT_ID,
                AGENT_ALIAS_ID,
                concurrency=args.concurrency,
                endpoint_url=args.bedrock_url,
                out=str(args.workdir / f"{run_id}.jsonl"),
                eval_run_id=run_id,
            )
        )
    elapsed = time.perf_counter() - started
    answer = {
        "cases": summary.cases,
        "passed": summary.passed,
        "errors": args.cases - summary.passed,
        "seconds": round(elapsed, 3),
        "flow_duration_s": round(summary.duration_s, 3),
        "cases_per_s": round(summary.cases / elapsed, 2),
        "plain_case_s": [round(s, 4) for s in baseline],
        "plain_case_median_s": round(median(baseline), 4),
        "plain_concurrent": ceiling,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_flow_mb": round(rss_before, 1),
        "rss_peak_during_flow_mb": round(sampler.peak_mb, 1),
        "rss_after_flow_mb": round(current_rss_mb(), 1),
    }
    print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
