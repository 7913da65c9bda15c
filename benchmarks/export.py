"""`export_spans_per_s`: how fast a burst of traced invocations reaches the local Nexus.

The burst makes, through the same `Tracer` calls the flow's hooks and tasks make, the
traces of `burst_invocations` invocations of the benchmark agent (one real turn read from
the emulator, reused), as fast as the caller can; the clock runs from the first spooled
operation until the exporter has delivered everything. Running the flows themselves
would measure Prefect's pace (~1 flow run/s here), not the exporter's.

The figure is the median of `EXPORT_BURSTS` bursts, after an uncounted smaller one.

Baseline: the same local Nexus taking span POSTs from one kept-alive `httpx.Client`
posting prebuilt bodies at the exporter's concurrency: what the usual Python HTTP client
reaches without any tracing work (the exporter writes over its own lean HTTP/1.1 path,
`nexus/http1.py`, and now outpaces it).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from benchmarks.figures import AGENT_ALIAS_ID, AGENT_ID, PROMPT, Figure, Sizes
from benchmarks.harness import Services, benchmark_call, plain_client

EXPORTER_WORKERS = 4
"""`NexusExporter`'s default number of delivery threads."""
FLUSH_TIMEOUT_S = 300.0
EXPORT_BURSTS = 3
"""Bursts measured; the figure is their median."""


def read_benchmark_turn(services: Services) -> Any:
    """One turn of the benchmark agent, read like the drain task reads it."""
    from nexus_bedrock_tasks.bedrock.reader import read_turn

    client = plain_client(services.bedrock_url)
    try:
        return read_turn(benchmark_call(client, f"bench-{uuid.uuid4().hex}"))
    finally:
        client.close()


def trace_invocation(tracer: Any, turn: Any) -> None:
    """The tracer calls of one invocation flow run without returnControl, in their order."""
    from nexus_bedrock_tasks import semconv
    from nexus_bedrock_tasks.summary import summarize

    run_id = uuid.uuid4()
    tracer.begin(
        run_id,
        name=semconv.trace_name(PROMPT),
        agent_name="bedrock-agent",
        metadata={"agent_id": AGENT_ID, "agent_alias_id": AGENT_ALIAS_ID, "prompt": PROMPT},
    )
    invoke_task = uuid.uuid4()
    tracer.task_started(run_id, invoke_task, "invoke_agent")
    tracer.task_output(run_id, invoke_task, {"session_id": "s", "aws_retries": 0})
    tracer.task_ended(run_id, invoke_task, status="ok")
    drain_task = uuid.uuid4()
    tracer.task_started(run_id, drain_task, "drain_stream")
    tracer.add_turn(run_id, turn, drain_task)
    tracer.task_ended(run_id, drain_task, status="ok")
    finalize_task = uuid.uuid4()
    tracer.task_started(run_id, finalize_task, "finalize_trace")
    summary = summarize([turn], prices=tracer.settings.model_prices)
    tracer.record_summary(run_id, summary, semconv.TRACE_SUCCESS)
    tracer.task_ended(run_id, finalize_task, status="ok")
    tracer.end(run_id, status=semconv.TRACE_SUCCESS)
    tracer.forget(run_id)


def exporter_burst(
    services: Services, workdir: Path, invocations: int, name: str = "burst"
) -> dict[str, Any]:
    """Trace `invocations` invocations at once; how long until all reached Nexus.

    Each burst has an exporter of its own (its own threads, connections and outbox file
    `outbox-<name>.sqlite3`), as a new process would.
    """
    from nexus_bedrock_tasks.nexus.exporter import NexusExporter
    from nexus_bedrock_tasks.settings import NexusSettings
    from nexus_bedrock_tasks.tracing import Tracer

    turn = read_benchmark_turn(services)
    exporter = NexusExporter(
        NexusSettings(base_url=services.nexus_url, api_key=services.api_key),
        outbox_path=workdir / f"outbox-{name}.sqlite3",
        workers=EXPORTER_WORKERS,
    )
    exporter.start()
    tracer = Tracer(exporter)
    try:
        cpu, started = time.process_time(), time.perf_counter()
        for _ in range(invocations):
            trace_invocation(tracer, turn)
        spooled_s = time.perf_counter() - started
        left = exporter.flush(FLUSH_TIMEOUT_S)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu
        stats = exporter.stats()
    finally:
        exporter.close(10)
    operations = stats["delivered"] + stats["deduplicated"]
    # Each trace is one create and one end (PATCH); everything else is a span.
    spans = operations - 2 * invocations
    return {
        "invocations": invocations,
        "spans": spans,
        "spans_per_invocation": round(spans / invocations, 2),
        "requests": operations,
        "seconds": round(elapsed, 3),
        "spool_seconds": round(spooled_s, 3),
        "spool_ms_per_invocation": round(1000 * spooled_s / invocations, 2),
        "cpu_ms_per_invocation": round(1000 * cpu_s / invocations, 2),
        "left_after_flush": left,
        "exporter_stats": stats,
        "spans_per_s": round(spans / elapsed, 1),
        "requests_per_s": round(operations / elapsed, 1),
    }


def raw_posts(services: Services, posts: int, concurrency: int) -> dict[str, Any]:
    """Span POSTs/s the local Nexus takes from a minimal client at `concurrency`."""
    headers = {"Authorization": f"Bearer {services.api_key}"}
    with httpx.Client(base_url=services.nexus_url, headers=headers, timeout=30) as http:
        now = "2025-01-01T00:00:00.000Z"
        created = http.post(
            "/api/v1/traces",
            json={
                "agent_id": "bedrock-agent-baseline",
                "name": "raw span posts",
                "status": "running",
                "started_at": now,
            },
        )
        created.raise_for_status()
        trace_id = created.json()["trace_id"]
        body = json.dumps(
            {
                "name": "llm:orchestration",
                "status": "ok",
                "started_at": now,
                "ended_at": now,
                "input": json.dumps({"trace_id": "t" * 40, "prompt_type": "ORCHESTRATION"}),
                "output": json.dumps({"model": "m", "input_tokens": 1, "text": "x" * 300}),
            }
        ).encode()
        counter = iter(range(posts))
        lock = threading.Lock()
        failures: list[int] = []

        def post_until_done() -> None:
            while True:
                with lock:
                    if next(counter, None) is None:
                        return
                response = http.post(
                    f"/api/v1/traces/{trace_id}/spans",
                    content=body,
                    headers={"Content-Type": "application/json"},
                )
                if response.status_code != 201:
                    failures.append(response.status_code)

        threads = [threading.Thread(target=post_until_done) for _ in range(concurrency)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
    return {
        "posts": posts,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "failures": len(failures),
        "spans_per_s": round(posts / elapsed, 1),
    }


def export_figure(services: Services, workdir: Path, sizes: Sizes) -> Figure:
    """Spans/s delivered by the exporter (median of `EXPORT_BURSTS` bursts), against an
    `httpx.Client` posting prebuilt span bodies to the same server at the same concurrency.

    A smaller burst goes first, uncounted: it takes the process's one-time costs (first
    calls of the code paths, the server's first writes), which a long-lived caller pays
    once. Each counted burst still starts a fresh exporter (threads, connections, outbox).
    """
    warmup = exporter_burst(services, workdir, max(1, sizes.burst_invocations // 4), name="warmup")
    bursts = [
        exporter_burst(services, workdir, sizes.burst_invocations, name=f"burst-{n}")
        for n in range(EXPORT_BURSTS)
    ]
    burst = sorted(bursts, key=lambda b: float(b["spans_per_s"]))[len(bursts) // 2]
    rates = [float(b["spans_per_s"]) for b in bursts]
    ceiling = raw_posts(services, sizes.raw_posts, EXPORTER_WORKERS)
    ratio = round(burst["spans_per_s"] / ceiling["spans_per_s"], 3)
    return Figure(
        key="export_spans_per_s",
        value=burst["spans_per_s"],
        measured=(
            f"exporter {burst['spans_per_s']:,.0f} spans/s (median of {len(bursts)} bursts "
            f"of {sizes.burst_invocations} invocations; {min(rates):,.0f}–{max(rates):,.0f})"
        ),
        baseline=(
            f"httpx.Client posting prebuilt spans, same server and concurrency "
            f"{ceiling['spans_per_s']:,.0f}/s"
        ),
        ratio=ratio,
        raw={
            "burst": burst,
            "bursts_spans_per_s": rates,
            "warmup": warmup,
            "httpx_client": ceiling,
        },
    )
