"""Which spooled operation may go to Nexus now: the ordering rules, without any I/O.

Nexus has no span update and a child needs its parent's Nexus id (NEXUS_API.md), so:

- a trace is created before anything else of it;
- a span goes after its trace and after its parent. Spans are spooled when they end, so a
  parent usually arrives *after* its children; they wait for it. A parent that never comes
  (neither spooled nor delivered) does not block forever: once the trace has ended, no span
  can come any more and the child goes at the trace root;
- a trace's end goes after every span spooled before it;
- a parked span (Nexus refused it for good) releases its children to the root and does not
  hold back the trace's end.

Everything else is independent: spans of different traces, and siblings whose parent is
known, may be delivered concurrently. Only the exporter's dispatcher thread uses this class.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from nexus_bedrock_tasks.nexus.outbox import OutboxOp


@dataclass(frozen=True, slots=True)
class Delivery:
    """One operation ready to send, with the Nexus ids it needs.

    Attributes:
        trace_id: the Nexus id of the op's trace (None when the op creates it).
        parent_span_id: the Nexus id of the span's parent, None for the trace root.
        sibling_ids: Nexus ids of the trace's other delivered spans; only filled when a
            lookup is due (`op.attempted`), so a look-alike span is not taken for this one.
    """

    op: OutboxOp
    trace_id: str | None
    parent_span_id: str | None
    sibling_ids: frozenset[str] = frozenset()


@dataclass(eq=False)
class _Trace:
    local_id: str
    nexus_id: str | None = None
    create: OutboxOp | None = None
    closed: bool = False
    spans: dict[str, OutboxOp] = field(default_factory=dict)
    span_ids: dict[str, str] = field(default_factory=dict)
    parked: set[str] = field(default_factory=set)
    need_trace: list[OutboxOp] = field(default_factory=list)
    need_parent: dict[str, list[OutboxOp]] = field(default_factory=dict)
    end_ops: dict[int, OutboxOp] = field(default_factory=dict)
    # end op seq -> spans spooled before it that are still undelivered
    end_blockers: dict[int, int] = field(default_factory=dict)
    asked: set[str] = field(default_factory=set)
    # ops of this trace that are ready or in flight: the trace is not done while any are
    queued: int = 0


class DeliveryScheduler:
    """Holds every undelivered operation of one exporter and hands out the ready ones."""

    def __init__(self) -> None:
        self._traces: dict[str, _Trace] = {}
        # Trace creations queue apart: a plan limit stops them while spans of traces
        # that already exist keep going.
        self._ready_creates: deque[OutboxOp] = deque()
        self._ready_rest: deque[OutboxOp] = deque()
        self._inflight: set[int] = set()
        self._dirty: set[str] = set()
        self._all_closed = False
        self.pending = 0
        """Operations not yet delivered (including in flight and parked ones)."""
        self.parked = 0
        """Operations Nexus refused for good in this process."""

    @property
    def ready(self) -> int:
        """Operations that could be sent right now."""
        return len(self._ready_creates) + len(self._ready_rest)

    @property
    def ready_without_creates(self) -> int:
        """Ready operations that do not create a trace."""
        return len(self._ready_rest)

    @property
    def inflight(self) -> int:
        """Operations handed out and not yet reported back."""
        return len(self._inflight)

    def add(self, op: OutboxOp) -> None:
        """Take a newly spooled (or adopted) operation; call in `seq` order."""
        self.pending += 1
        trace = self._traces.get(op.trace_local_id)
        if trace is None:
            trace = self._traces[op.trace_local_id] = _Trace(
                op.trace_local_id, closed=self._all_closed
            )
        self._dirty.add(op.trace_local_id)
        if op.kind == "trace":
            trace.create = op
            self._enqueue(trace, [op])
        elif op.kind == "span":
            trace.spans[op.local_id] = op
            self._place(trace, op)
        else:
            trace.closed = True
            trace.end_ops[op.seq] = op
            trace.end_blockers[op.seq] = len(trace.spans.keys() - trace.parked)
            self._release_ends(trace)

    def close_trace(self, trace_local_id: str) -> None:
        """No more spans will come for this trace (its process is gone)."""
        trace = self._traces.get(trace_local_id)
        if trace is not None:
            trace.closed = True
            self._dirty.add(trace_local_id)

    def close_all(self) -> None:
        """No more spans will come for any trace (the exporter is closing)."""
        self._all_closed = True
        for trace_local_id, trace in self._traces.items():
            trace.closed = True
            self._dirty.add(trace_local_id)

    def unresolved(self, *, again: bool = False) -> list[tuple[str, str]]:
        """``(trace local id, local id)`` pairs whose Nexus id must come from elsewhere.

        These are traces and parents not spooled here: delivered by an earlier process or
        another one. Each is reported once, or every time with `again` (for polling).
        """
        names = list(self._traces) if again else [t for t in self._dirty if t in self._traces]
        out: list[tuple[str, str]] = []
        for trace_local_id in names:
            trace = self._traces[trace_local_id]
            wanted = [p for p in trace.need_parent if p not in trace.spans]
            if trace.nexus_id is None and trace.create is None:
                wanted.append(trace_local_id)
            for local_id in wanted:
                if again or local_id not in trace.asked:
                    trace.asked.add(local_id)
                    out.append((trace_local_id, local_id))
        return out

    def learn(self, trace_local_id: str, local_id: str, nexus_id: str) -> None:
        """Record a Nexus id found in the outbox's id table."""
        trace = self._traces.get(trace_local_id)
        if trace is None:
            return
        if local_id == trace_local_id:
            if trace.nexus_id is None:
                self._trace_known(trace, nexus_id)
        elif local_id not in trace.span_ids:
            trace.span_ids[local_id] = nexus_id
            self._enqueue(trace, trace.need_parent.pop(local_id, ()))

    def take(self, limit: int, *, creates: bool = True) -> list[Delivery]:
        """Up to `limit` ready operations, marked in flight.

        Spans and ends of known traces go first (oldest first), then new traces, unless
        `creates` is False.
        """
        for trace_local_id in self._dirty:
            trace = self._traces.get(trace_local_id)
            if trace is not None and trace.closed:
                self._release_orphans(trace)
        self._dirty.clear()
        out: list[Delivery] = []
        while len(out) < limit:
            if self._ready_rest:
                op = self._ready_rest.popleft()
            elif creates and self._ready_creates:
                op = self._ready_creates.popleft()
            else:
                break
            trace = self._traces[op.trace_local_id]
            parent = trace.span_ids.get(op.parent_local_id) if op.parent_local_id else None
            siblings = frozenset(trace.span_ids.values()) if op.attempted else frozenset()
            self._inflight.add(op.seq)
            out.append(
                Delivery(op, trace.nexus_id, parent if op.kind == "span" else None, siblings)
            )
        return out

    def succeeded(self, op: OutboxOp, nexus_id: str | None) -> None:
        """Nexus acknowledged `op` (`nexus_id` for creates)."""
        trace = self._handed_back(op)
        self.pending -= 1
        if op.kind == "trace":
            trace.create = None
            if trace.nexus_id is None and nexus_id is not None:
                self._trace_known(trace, nexus_id)
        elif op.kind == "span":
            trace.spans.pop(op.local_id, None)
            if nexus_id is not None:
                trace.span_ids[op.local_id] = nexus_id
            self._enqueue(trace, trace.need_parent.pop(op.local_id, ()))
            self._span_settled(trace, op)
        idle = not (trace.queued or trace.create or trace.spans or trace.end_ops)
        if idle and trace.closed and not (trace.need_trace or trace.need_parent):
            # Its ids stay in the outbox's id table for any late span.
            del self._traces[op.trace_local_id]

    def retry(self, op: OutboxOp) -> None:
        """Delivery failed transiently: `op` goes first in line again."""
        trace = self._handed_back(op)
        trace.queued += 1
        (self._ready_creates if op.kind == "trace" else self._ready_rest).appendleft(op)

    def park(self, op: OutboxOp) -> None:
        """Nexus refused `op` for good: it stays pending, dependents stop waiting for it."""
        trace = self._handed_back(op)
        self.parked += 1
        if op.kind == "span":
            trace.parked.add(op.local_id)
            self._enqueue(trace, trace.need_parent.pop(op.local_id, ()))
            self._span_settled(trace, op)

    def _enqueue(self, trace: _Trace, ops: Iterable[OutboxOp]) -> None:
        for op in ops:
            trace.queued += 1
            (self._ready_creates if op.kind == "trace" else self._ready_rest).append(op)

    def _handed_back(self, op: OutboxOp) -> _Trace:
        self._inflight.discard(op.seq)
        trace = self._traces[op.trace_local_id]
        trace.queued -= 1
        return trace

    def _place(self, trace: _Trace, op: OutboxOp) -> None:
        if trace.nexus_id is None:
            trace.need_trace.append(op)
            return
        parent = op.parent_local_id
        if parent is None or parent in trace.span_ids or parent in trace.parked:
            self._enqueue(trace, [op])
        elif parent not in trace.spans and trace.closed:
            self._enqueue(trace, [op])
        else:
            trace.need_parent.setdefault(parent, []).append(op)

    def _trace_known(self, trace: _Trace, nexus_id: str) -> None:
        trace.nexus_id = nexus_id
        # Placing its spans may reveal parents to look up elsewhere.
        self._dirty.add(trace.local_id)
        waiting, trace.need_trace = trace.need_trace, []
        for op in waiting:
            self._place(trace, op)
        self._release_ends(trace)

    def _span_settled(self, trace: _Trace, op: OutboxOp) -> None:
        for seq in trace.end_blockers:
            if seq > op.seq:
                trace.end_blockers[seq] -= 1
        self._release_ends(trace)

    def _release_ends(self, trace: _Trace) -> None:
        if trace.nexus_id is None:
            return
        for seq, blockers in list(trace.end_blockers.items()):
            if blockers == 0:
                del trace.end_blockers[seq]
                self._enqueue(trace, [trace.end_ops.pop(seq)])

    def _release_orphans(self, trace: _Trace) -> None:
        for parent in [p for p in trace.need_parent if p not in trace.spans]:
            self._enqueue(trace, trace.need_parent.pop(parent))
