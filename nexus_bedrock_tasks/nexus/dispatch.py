"""The exporter's dispatcher thread: orders spooled operations and hands them to workers.

It alone touches the `DeliveryScheduler`. Per cycle it takes in newly spooled operations
and delivery outcomes, looks up ids other processes delivered, and hands ready operations
to the workers. One outbox transaction per cycle deletes the acknowledged rows and marks
the operations handed out, before they go (so a process dying mid-POST leaves a mark, and
the next delivery looks first).

Pauses: after Nexus was unavailable (doubling delays up to a minute, or ``Retry-After``),
after an auth error (everything, for minutes), after a plan limit (trace creation only:
spans of traces that exist keep going). Each kind of problem is logged once.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_bedrock_tasks.exceptions import NexusBedrockError, NexusQuotaError
from nexus_bedrock_tasks.nexus.delivery import Outcome
from nexus_bedrock_tasks.nexus.outbox import Outbox, OutboxOp
from nexus_bedrock_tasks.nexus.redact import Redactor
from nexus_bedrock_tasks.nexus.schedule import Delivery, DeliveryScheduler
from nexus_bedrock_tasks.nexus.wire import NexusUnavailableError

# The exporter's logger: users silence or route Nexus export messages in one place.
logger = logging.getLogger("nexus_bedrock_tasks.nexus.exporter")

FATAL_PAUSE_S = 300.0
MAX_PAUSE_S = 60.0
POLL_S = 2.0
"""How often ids that other processes deliver are looked up in the outbox."""
MAX_REMEMBERED_TRACES = 10_000


class OnceLogger:
    """Logs each kind of export problem once (not once per span), secrets redacted."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._keys: set[str] = set()
        self._lock = threading.Lock()

    def warn(self, key: str, message: str, exc: BaseException | None = None) -> None:
        """Log `message` unless a warning under `key` was logged already."""
        with self._lock:
            if key in self._keys:
                return
            self._keys.add(key)
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        logger.warning("%s", self.redactor.redact(message), exc_info=exc_info)

    def forget(self, key: str) -> None:
        """The problem under `key` went away: log it again if it comes back."""
        with self._lock:
            self._keys.discard(key)


@dataclass(eq=False)
class Mailbox:
    """What caller, worker and dispatcher threads hand each other, guarded by `cond`.

    Two conditions share one lock: `cond` wakes the dispatcher (news for it), `progress`
    wakes whoever waits for its cycles (flush, trace ids), so a burst of delivery
    outcomes does not wake those waiters once per request.

    New operations and outcomes wake the dispatcher only once the workers run low on
    work (`needs_dispatcher`): while they have plenty, a cycle would only cost CPU they
    need, and waiting lets one cycle (one outbox transaction) take in many outcomes.

    When nothing is in flight, new operations also wait up to `delay_s` for company
    (`incoming_due`): an agent run spools most of its spans in its last milliseconds,
    while Prefect finishes the run, and delivering them a moment later keeps that work
    off the run's own time. A full batch, a flush (`kick`) or a new trace (`hurry`: it
    shows the run live, and the run's end waits for its Nexus id) ends the wait.

    Attributes:
        incoming: operations spooled and not yet taken in by the dispatcher.
        results: delivery outcomes not yet applied.
        pending: undelivered operations the dispatcher holds, as of its last cycle.
        stalled: nothing can go now (all delivered, waiting, refused or paused for long).
        busy: a cycle is under way; `pending` and `stalled` are not current until it ends.
        cycles: dispatcher cycles completed (flush waits for one after its request).
        counts: delivered/deduplicated/failed/parked; written by the dispatcher only.
        trace_ids: Nexus ids of traces delivered by this process (the latest ones).
        handed_out: deliveries handed to the workers and not yet taken back, as of the
            dispatcher's last cycle.
        refill_below: wake the dispatcher once fewer deliveries than this are left.
        delay_s: how long new operations may wait for company while nothing is in flight.
        batch: this many new operations go at once, without waiting.
        incoming_since: when the oldest operation in `incoming` was spooled (monotonic).
        hurry: `incoming` holds a new trace: no waiting.
    """

    lock: threading.RLock = field(default_factory=threading.RLock)
    cond: threading.Condition = field(init=False)
    progress: threading.Condition = field(init=False)
    incoming: list[OutboxOp] = field(default_factory=list)
    results: list[Outcome] = field(default_factory=list)
    stopping: bool = False
    kick: bool = False
    close_traces: bool = False
    cycles: int = 0
    pending: int = 0
    stalled: bool = False
    busy: bool = False
    counts: Counter[str] = field(default_factory=Counter)
    trace_ids: dict[str, str] = field(default_factory=dict)
    handed_out: int = 0
    refill_below: int = 1
    delay_s: float = 0.0
    batch: int = 1
    incoming_since: float = 0.0
    hurry: bool = False

    def __post_init__(self) -> None:
        self.cond = threading.Condition(self.lock)
        self.progress = threading.Condition(self.lock)

    def needs_dispatcher(self) -> bool:
        """The workers run low on work (call with the lock held)."""
        return self.handed_out - len(self.results) < self.refill_below

    def incoming_due(self, now: float) -> bool:
        """The operations in `incoming` should go now (call with the lock held): deliveries
        are in flight (the pipeline runs: no waiting), a batch has gathered, a new trace
        is among them, or the oldest has waited `delay_s`.
        """
        return (
            self.handed_out > len(self.results)
            or len(self.incoming) >= self.batch
            or self.hurry
            or now - self.incoming_since >= self.delay_s
        )

    def take_incoming(self) -> list[OutboxOp]:
        """Hand the spooled operations to the dispatcher (call with the lock held)."""
        incoming, self.incoming = self.incoming, []
        self.hurry = False
        return incoming


class Dispatcher:
    """The dispatcher thread's state and loop.

    Args:
        outbox: the spool (this process's owner).
        box: the hand-over to callers and workers.
        submit: hands one ready delivery to the workers.
        log: the exporter's once-per-problem logger.
        max_inflight: deliveries handed out at most at a time.
        redelivery_delay: first pause after Nexus was unavailable.
        delay: how long new operations wait for company while nothing is in flight.
    """

    def __init__(
        self,
        outbox: Outbox,
        box: Mailbox,
        submit: Callable[[Delivery], None],
        log: OnceLogger,
        *,
        max_inflight: int,
        redelivery_delay: float,
        delay: float = 0.0,
    ) -> None:
        self._outbox = outbox
        self._box = box
        self._submit = submit
        self._log = log
        self._max_inflight = max_inflight
        self._redelivery_delay = redelivery_delay
        self._resume_at = 0.0
        self._creates_resume_at = 0.0
        self._failures = 0
        self._fatal = False
        # Woken when the workers are down to about two deliveries each: enough to keep
        # them busy through a cycle, few enough that a cycle takes in many outcomes.
        box.refill_below = max(1, max_inflight // 8)
        box.delay_s = delay
        box.batch = max(1, max_inflight // 2)

    def run(self) -> None:
        """The dispatcher thread's loop; returns once the exporter stops."""
        try:
            self._run()
        except Exception:
            # A bug here must not surface in the agent run; flush() sees the thread gone.
            logger.exception("Nexus export stopped; undelivered data stays in the outbox")

    def _run(self) -> None:
        scheduler = DeliveryScheduler()
        seen = self._load_spooled(scheduler)
        closed_all = False
        next_poll = time.monotonic() + POLL_S
        while True:
            with self._box.cond:
                while not self._has_news(scheduler):
                    wake = next_poll if scheduler.pending else time.monotonic() + POLL_S
                    if scheduler.inflight < self._max_inflight:
                        wake = min(wake, self._next_send_time(scheduler))
                    if self._box.incoming:
                        wake = min(wake, self._box.incoming_since + self._box.delay_s)
                    left = wake - time.monotonic()
                    if left <= 0:
                        break
                    self._box.cond.wait(left)
                incoming = self._box.take_incoming()
                results, self._box.results = self._box.results, []
                self._box.busy = True
                stopping = self._box.stopping
                close_traces = self._box.close_traces
                if self._box.kick and not self._fatal:
                    self._resume_at = 0.0  # flush(): try now, unless an auth pause is on
                self._box.kick = False
            for op in incoming:
                if op.seq in seen:
                    seen.discard(op.seq)
                else:
                    scheduler.add(op)
            if close_traces and not closed_all:
                scheduler.close_all()
                closed_all = True
            acks = self._record(scheduler, results)
            now = time.monotonic()
            again = now >= next_poll
            if again:
                next_poll = now + POLL_S
            self._resolve(scheduler, again=again)
            batch = self._take(scheduler) if not stopping and now >= self._resume_at else []
            self._settle(scheduler, acks, batch)
            with self._box.cond:
                self._box.handed_out = scheduler.inflight
                self._box.pending = scheduler.pending
                self._box.stalled = scheduler.inflight == 0 and self._sendable(scheduler, now) == 0
                self._box.cycles += 1
                self._box.busy = False
                self._box.progress.notify_all()
            if stopping:
                return

    def _sendable(self, scheduler: DeliveryScheduler, now: float) -> int:
        """Ready operations no pause holds back (a transient pause does not count: it ends)."""
        if self._fatal and now < self._resume_at:
            return 0
        if now < self._creates_resume_at:
            return scheduler.ready_without_creates
        return scheduler.ready

    def _next_send_time(self, scheduler: DeliveryScheduler) -> float:
        """When the first ready operation may go (inf when none is ready)."""
        times = [float("inf")]
        if scheduler.ready_without_creates:
            times.append(self._resume_at)
        if scheduler.ready > scheduler.ready_without_creates:
            times.append(max(self._resume_at, self._creates_resume_at))
        return min(times)

    def _has_news(self, scheduler: DeliveryScheduler) -> bool:
        now = time.monotonic()
        box = self._box
        can_send = self._sendable(scheduler, now) and scheduler.inflight < self._max_inflight
        news = box.results or (box.incoming and box.incoming_due(now))
        return bool(
            (news and box.needs_dispatcher())
            or box.stopping
            or box.kick
            or (can_send and now >= self._resume_at)
        )

    def _load_spooled(self, scheduler: DeliveryScheduler) -> set[int]:
        """Adopt and queue what is spooled; returns the seqs loaded (they may also arrive
        through `Mailbox.incoming`, when spooled by this process before the thread started).
        """
        try:
            adopted_traces = self._outbox.adopt_orphans()
            ops = self._outbox.own_ops()
        except sqlite3.Error as exc:
            self._log.warn("load", f"Nexus export: cannot read the outbox ({exc})")
            return set()
        for op in ops:
            scheduler.add(op)
        self._resolve(scheduler, again=True)
        for trace_local_id in adopted_traces:
            scheduler.close_trace(trace_local_id)
        if adopted_traces:
            logger.info("Nexus export: delivering %d items left by earlier runs", len(ops))
        return {op.seq for op in ops}

    def _resolve(self, scheduler: DeliveryScheduler, *, again: bool) -> None:
        """Learn ids delivered elsewhere, before orphans of closed traces go to the root.

        Repeats while it learns something: a trace id found places its spans, which may
        reveal parents to look up in turn.
        """
        wanted = scheduler.unresolved(again=again)
        while wanted:
            try:
                found = self._outbox.nexus_ids({local_id for _, local_id in wanted})
            except sqlite3.Error as exc:
                self._log.warn("ids", f"Nexus export: cannot read the outbox ({exc})")
                return
            for trace_local_id, local_id in wanted:
                if local_id in found:
                    scheduler.learn(trace_local_id, local_id, found[local_id])
            wanted = scheduler.unresolved() if found else []

    def _take(self, scheduler: DeliveryScheduler) -> list[Delivery]:
        creates = time.monotonic() >= self._creates_resume_at
        return scheduler.take(self._max_inflight - scheduler.inflight, creates=creates)

    def _settle(
        self,
        scheduler: DeliveryScheduler,
        acks: list[tuple[OutboxOp, str | None]],
        batch: list[Delivery],
    ) -> None:
        """Write the cycle to the outbox, then hand `batch` to the workers."""
        try:
            # Marks before the first byte goes: a process dying mid-POST leaves a marked
            # row, which the next delivery looks up in Nexus instead of posting twice.
            self._outbox.settle(acks, [d.op.seq for d in batch if not d.op.attempted])
        except sqlite3.Error as exc:
            # Acknowledged rows stay spooled and marked: a later run finds them in Nexus.
            # Unmarked operations must not go.
            self._log.warn("write", f"Nexus export: cannot write the outbox ({exc})")
            for item in reversed(batch):
                scheduler.retry(item.op)
            return
        for item in batch:
            self._submit(item)

    def _record(
        self, scheduler: DeliveryScheduler, results: list[Outcome]
    ) -> list[tuple[OutboxOp, str | None]]:
        """Apply delivery outcomes: requeue, park, pause; returns the rows to delete."""
        acks = [(r.delivery.op, r.nexus_id) for r in results if r.kind == "ok"]
        transient: NexusUnavailableError | None = None
        error: BaseException | None = None
        for result in results:
            op = result.delivery.op
            if result.kind == "ok":
                scheduler.succeeded(op, result.nexus_id)
                self._box.counts["delivered"] += 1
                self._box.counts["deduplicated"] += result.deduplicated
                if op.kind == "trace" and result.nexus_id is not None:
                    self._creates_resume_at = 0.0  # a trace got in: no plan limit (any more)
                    self._remember_trace_id(op.local_id, result.nexus_id)
                continue
            self._box.counts["failed"] += 1
            error = result.error
            if result.kind == "park":
                scheduler.park(op)
                self._box.counts["parked"] += 1
                self._warn_about(result)
                continue
            scheduler.retry(op)
            if isinstance(result.error, NexusQuotaError):
                self._creates_resume_at = time.monotonic() + FATAL_PAUSE_S
                self._warn_about(result)
            elif result.kind == "fatal":
                self._fatal = True
                self._resume_at = time.monotonic() + FATAL_PAUSE_S
                self._warn_about(result)
            elif isinstance(result.error, NexusUnavailableError):
                transient = result.error
        if acks and error is None:
            self._failures = 0
            self._fatal = False
            self._log.forget("unavailable")
        if transient is not None:
            delay = max(
                min(MAX_PAUSE_S, self._redelivery_delay * 2**self._failures),
                transient.retry_after or 0.0,
            )
            self._resume_at = max(self._resume_at, time.monotonic() + delay)
            self._failures += 1
            self._log.warn(
                "unavailable",
                f"Nexus unavailable ({transient.message}); data stays in the outbox and is "
                "redelivered in the background",
            )
        if error is not None:
            self._set_last_error(f"{type(error).__name__}: {error}")
        return acks

    def _remember_trace_id(self, trace_local_id: str, nexus_id: str) -> None:
        with self._box.cond:
            self._box.trace_ids[trace_local_id] = nexus_id
            if len(self._box.trace_ids) > MAX_REMEMBERED_TRACES:
                del self._box.trace_ids[next(iter(self._box.trace_ids))]

    def _warn_about(self, result: Outcome) -> None:
        exc = result.error
        what = f"{result.delivery.op.kind} {result.delivery.op.local_id}"
        if isinstance(exc, NexusBedrockError):
            self._log.warn(
                type(exc).__name__,
                f"Nexus refused {what}: {exc}; it stays in the outbox "
                "(`nexus-bedrock outbox status`)",
            )
        else:
            self._log.warn(f"bug:{type(exc).__name__}", f"delivering {what} failed", exc)

    def _set_last_error(self, message: str) -> None:
        try:
            self._outbox.set_last_error(self._log.redactor.redact(message))
        except sqlite3.Error as exc:
            self._log.warn("last_error", f"Nexus export: cannot write the outbox ({exc})")
