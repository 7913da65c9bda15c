"""One invocation of the benchmark agent, timed in each way the figures compare.

- `overhead_ratio`: the traced invocation flow ÷ a plain boto3 invoke + drain.
- `tracing_overhead_ratio`: from the same rounds, see `benchmarks.tracing_cost`.
- `slow_nexus_ratio`: the traced flow with Nexus answering in 1 s ÷ answering at once.

Variants run interleaved, round by round, with the order rotated each round, so drift in
machine load reaches all of them alike.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.figures import AGENT_ALIAS_ID, AGENT_ID, AGENT_STEPS, PROMPT, Figure, Sizes
from benchmarks.harness import Knobs, LoopThread, Services, plain_call, plain_client
from benchmarks.stats import (
    Measure,
    cpus,
    describe,
    median,
    median_cost,
    median_difference_ci,
    walls,
)

SETTLE_TIMEOUT_S = 30.0
QUIET_S = 0.3
"""Pause before each timed run: Prefect's server records a flow's task runs from their
events for ~0.1 s after the run, and the run after it would otherwise meet that work."""


class TimedTracer:
    """Wraps a `Tracer`, adding up the wall time of the calls the flow makes into it.

    The sum is the tracing work on the flow's own path (hooks and tasks call these); it
    leaves out what the exporter's threads take from the flow through the GIL.
    """

    _TIMED = (
        "begin",
        "task_started",
        "task_output",
        "task_ended",
        "add_turn",
        "add_span",
        "record_summary",
        "end",
        "nexus_trace_id",
    )

    def __init__(self, tracer: Any) -> None:
        self._tracer = tracer
        self._lock = threading.Lock()
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._tracer, name)
        if name not in self._TIMED:
            return attribute

        def timed_call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds += time.perf_counter() - started

        return timed_call


class Invoker:
    """Runs the benchmark agent once per call, as a plain call or as a flow run."""

    def __init__(self, services: Services, loop: LoopThread, workdir: Path, sizes: Sizes) -> None:
        from nexus_bedrock_tasks.nexus.exporter import NexusExporter
        from nexus_bedrock_tasks.settings import NexusSettings
        from nexus_bedrock_tasks.tracing import Tracer

        self.services = services
        self.workdir = workdir
        self.loop = loop
        self.sizes = sizes
        self.knobs = Knobs(services)
        self.client = plain_client(services.bedrock_url)
        self.exporters = {
            "traced": NexusExporter(
                NexusSettings(base_url=services.nexus_url, api_key=services.api_key),
                outbox_path=workdir / "outbox-traced.sqlite3",
            ),
            "slow": NexusExporter(
                NexusSettings(base_url=services.faults_nexus_url, api_key=services.api_key),
                outbox_path=workdir / "outbox-slow.sqlite3",
            ),
            "untraced": NexusExporter(enabled=False),
        }
        for exporter in self.exporters.values():
            exporter.start()
        self.tracers = {
            name: TimedTracer(Tracer(exporter)) for name, exporter in self.exporters.items()
        }
        # Same exporter, own clock: the in-tracer time is that of the shared-clients runs.
        self.tracers["traced_own_clients"] = TimedTracer(Tracer(self.exporters["traced"]))

    def plain(self) -> Measure:
        """A stock boto3 invoke + drain of the whole stream."""
        session_id = self.knobs.new_session(self.sizes.step_latency_ms)
        cpu, started = time.process_time(), time.perf_counter()
        plain_call(self.client, session_id)
        return Measure(time.perf_counter() - started, time.process_time() - cpu)

    def flow(self, variant: str, settle: bool = True, shared_clients: bool = True) -> Measure:
        """One run of the invocation flow with the tracer `variant`.

        With `settle`, the exporter then delivers everything before this returns: the CPU
        figure includes the delivery, and the next run starts with an empty outbox. The
        wall-clock figure is the flow run alone. Without `shared_clients` the run makes
        its own Prefect API clients, as a flow called outside `reuse_prefect_clients` does.
        """
        from flows.invoke_agent import invoke_agent_flow
        from nexus_bedrock_tasks.tracing import set_tracer

        session_id = self.knobs.new_session(self.sizes.step_latency_ms)
        tracer = self.tracers[variant if shared_clients else f"{variant}_own_clients"]
        set_tracer(tracer)  # type: ignore[arg-type]
        try:
            cpu, started = time.process_time(), time.perf_counter()
            result = self.loop.run(
                invoke_agent_flow(
                    agent_id=AGENT_ID,
                    agent_alias_id=AGENT_ALIAS_ID,
                    prompt=PROMPT,
                    session_id=session_id,
                    endpoint_url=self.services.bedrock_url,
                ),
                shared=shared_clients,
            )
            elapsed = time.perf_counter() - started
            if settle:
                self.exporters[variant].flush(SETTLE_TIMEOUT_S)
            cpu_s = time.process_time() - cpu
        finally:
            set_tracer(None)
        if result.error:
            raise RuntimeError(f"the benchmark invocation failed: {result.error}")
        return Measure(elapsed, cpu_s)

    def empty_flow(self) -> Measure:
        """An async flow that does nothing: Prefect's own cost per flow run, the floor."""
        cpu, started = time.process_time(), time.perf_counter()
        self.loop.run(_empty_flow()())
        return Measure(time.perf_counter() - started, time.process_time() - cpu)

    def make_client(self) -> Measure:
        """What the flow pays per run to build its boto3 client (`make_client`)."""
        from nexus_bedrock_tasks.bedrock.client import make_client

        cpu, started = time.process_time(), time.perf_counter()
        make_client(region="us-east-1", endpoint_url=self.services.bedrock_url).close()
        return Measure(time.perf_counter() - started, time.process_time() - cpu)

    def close(self) -> dict[str, Any]:
        """Deliver what is left and stop the exporters; their final counts."""
        counts: dict[str, Any] = {}
        self.knobs.nexus_delay(0)
        for name, exporter in self.exporters.items():
            left = exporter.flush(60)
            counts[name] = {**exporter.stats(), "left_after_flush": left}
            exporter.close(5)
        self.knobs.close()
        self.client.close()
        return counts


_EMPTY_FLOW: list[Any] = []


def _empty_flow() -> Any:
    """The do-nothing async flow (made on first use: Prefect loads only then)."""
    if not _EMPTY_FLOW:
        from prefect import flow

        @flow(name="bench-empty")
        async def bench_empty() -> None:
            return None

        _EMPTY_FLOW.append(bench_empty)
    return _EMPTY_FLOW[0]


def interleaved(
    variants: dict[str, Callable[[], Measure]], rounds: int, warmup: int, quiet_s: float = 0.0
) -> dict[str, list[Measure]]:
    """Run every variant once per round, rotating the order; drop the warm-up rounds.

    With `quiet_s`, every run starts after that long a pause, so the servers have done
    the previous run's work (Prefect records a run's task runs from its events after the
    run) and no variant starts into more leftover work than another; a full garbage
    collection in the pause keeps one (~50 ms with Prefect loaded) out of the runs.
    """
    names = list(variants)
    samples: dict[str, list[Measure]] = {name: [] for name in names}
    for number in range(warmup + rounds):
        shift = number % len(names)
        for name in names[shift:] + names[:shift]:
            if quiet_s:
                gc.collect()
                time.sleep(quiet_s)
            measure = variants[name]()
            if number >= warmup:
                samples[name].append(measure)
    return samples


def invocation_figures(invoker: Invoker, only: set[str]) -> list[Figure]:
    """`overhead_ratio`, `tracing_overhead_ratio` and `slow_nexus_ratio` (those in `only`)."""
    sizes = invoker.sizes
    figures: list[Figure] = []
    if only & {"overhead_ratio", "tracing_overhead_ratio"}:
        samples = interleaved(
            {
                "plain": invoker.plain,
                "traced": lambda: invoker.flow("traced"),
                "untraced": lambda: invoker.flow("untraced"),
                "traced_own_clients": lambda: invoker.flow("traced", shared_clients=False),
                "empty_flow": invoker.empty_flow,
                "make_client": invoker.make_client,
            },
            sizes.rounds,
            sizes.warmup,
            QUIET_S,
        )
        if "tracing_overhead_ratio" in only:
            pairs = interleaved(
                {
                    "traced": lambda: invoker.flow("traced"),
                    "untraced": lambda: invoker.flow("untraced"),
                },
                sizes.tracing_rounds,
                0,
                QUIET_S,
            )
            for name, measures in pairs.items():
                samples[name] += measures
        # Every shared-clients traced run, warm-up ones included, went through this tracer.
        traced_runs = sizes.warmup + len(samples["traced"])
        in_tracer_ms = 1000 * invoker.tracers["traced"].seconds / traced_runs
        if "overhead_ratio" in only:
            figures.append(overhead_figure(samples, sizes))
        if "tracing_overhead_ratio" in only:
            from benchmarks.tracing_cost import tracing_figure

            figures.append(tracing_figure(samples, invoker, in_tracer_ms))
    if "slow_nexus_ratio" in only:
        figures.append(slow_nexus_figure(invoker, sizes))
    return figures


def overhead_figure(samples: dict[str, list[Measure]], sizes: Sizes) -> Figure:
    """The traced flow's median wall time ÷ the plain call's."""
    traced, plain = median(walls(samples["traced"])), median(walls(samples["plain"]))
    return Figure(
        key="overhead_ratio",
        value=round(traced / plain, 3),
        measured=f"traced invocation flow {traced:.3f} s (median)",
        baseline=f"plain boto3 invoke + drain {plain:.3f} s (median)",
        ratio=round(traced / plain, 3),
        raw={
            "agent": f"{AGENT_ID}/{AGENT_ALIAS_ID}",
            "steps": AGENT_STEPS,
            "step_latency_ms": sizes.step_latency_ms,
            "traced_flow_s": describe(walls(samples["traced"])),
            "untraced_flow_s": describe(walls(samples["untraced"])),
            "prefect_clients": "opened once (`reuse_prefect_clients`), as a long-lived caller does",
            "traced_flow_own_clients_s": describe(walls(samples["traced_own_clients"])),
            "plain_call_s": describe(walls(samples["plain"])),
            "added_s": round(traced - plain, 4),
            "prefect_empty_async_flow_s": describe(walls(samples["empty_flow"])),
            "make_client_s": describe(walls(samples["make_client"])),
            "traced_flow_cpu_s": describe(cpus(samples["traced"])),
            "plain_call_cpu_s": describe(cpus(samples["plain"])),
        },
    )


def cost_ms(with_it: list[float], without: list[float]) -> dict[str, float]:
    """What `with_it` costs over `without`, in ms (paired rounds: the median of the
    per-round differences), with its 90 % bootstrap interval."""
    low, high = median_difference_ci(with_it, without)
    return {
        "ms": round(1000 * median_cost(with_it, without), 2),
        "ci90_low_ms": round(1000 * low, 2),
        "ci90_high_ms": round(1000 * high, 2),
    }


def slow_nexus_figure(invoker: Invoker, sizes: Sizes) -> Figure:
    """The traced flow's latency with a slow Nexus ÷ with a prompt one: 1 + the median of
    the paired per-round differences ÷ the prompt flow's median.

    Each run starts with nothing left to deliver, so it measures one invocation against
    that Nexus, not a backlog of earlier ones.
    """
    slow_exporter = invoker.exporters["slow"]

    def run(delay_s: float) -> Measure:
        invoker.knobs.nexus_delay(0)
        slow_exporter.flush(SETTLE_TIMEOUT_S)
        invoker.knobs.nexus_delay(delay_s)
        return invoker.flow("slow", settle=False)

    samples = interleaved(
        {"prompt": lambda: run(0.0), "slow": lambda: run(sizes.nexus_delay_s)},
        sizes.slow_rounds,
        sizes.warmup,
        QUIET_S,
    )
    slow, prompt = median(walls(samples["slow"])), median(walls(samples["prompt"]))
    added = cost_ms(walls(samples["slow"]), walls(samples["prompt"]))
    # The ratio from the paired cost, the same estimate its interval is drawn around.
    ratio = round(1 + added["ms"] / 1000 / prompt, 3)
    value_range = (
        round(1 + added["ci90_low_ms"] / 1000 / prompt, 3),
        round(1 + added["ci90_high_ms"] / 1000 / prompt, 3),
    )
    note = f"90 % interval {value_range[0]}…{value_range[1]}"
    return Figure(
        key="slow_nexus_ratio",
        value=ratio,
        measured=f"traced flow, Nexus answering in {sizes.nexus_delay_s:g} s: {slow:.3f} s",
        baseline=f"traced flow, Nexus answering at once: {prompt:.3f} s",
        ratio=ratio,
        raw={
            "nexus_delay_s": sizes.nexus_delay_s,
            "slow_nexus_flow_s": describe(walls(samples["slow"])),
            "prompt_nexus_flow_s": describe(walls(samples["prompt"])),
            "added": added,
        },
        note=note,
        value_range=value_range,
    )
