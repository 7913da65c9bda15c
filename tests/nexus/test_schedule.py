"""The delivery order rules, without I/O: parents first, ends last, nothing blocked forever."""

from __future__ import annotations

import itertools
import random
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from nexus_bedrock_tasks.nexus.outbox import OpKind, OutboxOp
from nexus_bedrock_tasks.nexus.schedule import Delivery, DeliveryScheduler

_seq = itertools.count(1)


def op(kind: OpKind, trace: str, local: str | None = None, parent: str | None = None) -> OutboxOp:
    return OutboxOp(next(_seq), kind, trace, local or trace, parent, {})


def ids(deliveries: list[Delivery]) -> list[str]:
    return [d.op.local_id for d in deliveries]


def ack(scheduler: DeliveryScheduler, deliveries: list[Delivery]) -> None:
    for d in deliveries:
        scheduler.succeeded(d.op, None if d.op.kind == "end" else f"N-{d.op.local_id}")


def test_children_wait_for_a_parent_spooled_after_them() -> None:
    s = DeliveryScheduler()
    s.add(op("trace", "T"))
    s.add(op("span", "T", "child", parent="root"))
    ack(s, s.take(10))
    assert s.take(10) == []  # the parent has not ended yet: the child waits

    s.add(op("span", "T", "root"))
    first = s.take(10)
    assert ids(first) == ["root"]
    ack(s, first)
    second = s.take(10)
    assert ids(second) == ["child"] and second[0].parent_span_id == "N-root"
    assert second[0].trace_id == "N-T"


def test_end_goes_after_every_earlier_span_and_releases_orphans() -> None:
    s = DeliveryScheduler()
    s.add(op("trace", "T"))
    ack(s, s.take(10))
    s.add(op("span", "T", "orphan", parent="never-spooled"))
    s.add(op("span", "T", "a"))
    s.add(op("end", "T"))

    batch = s.take(10)
    assert ids(batch) == ["a", "orphan"]  # the end closed the trace: the orphan goes at root
    assert all(d.parent_span_id is None for d in batch)
    ack(s, batch[:1])
    assert s.take(10) == []  # end still waits for the orphan
    ack(s, batch[1:])
    assert ids(s.take(10)) == ["T"]


def test_parked_parent_releases_children_and_the_end() -> None:
    s = DeliveryScheduler()
    s.add(op("trace", "T"))
    ack(s, s.take(10))
    s.add(op("span", "T", "child", parent="bad"))
    bad = op("span", "T", "bad")
    s.add(bad)
    s.add(op("end", "T"))
    [d] = s.take(10)
    s.park(d.op)
    [child] = s.take(10)
    assert child.op.local_id == "child" and child.parent_span_id is None
    ack(s, [child])
    assert [d.op.kind for d in s.take(10)] == ["end"]
    assert s.parked == 1


def test_ids_from_other_processes_are_asked_for_once_and_learned() -> None:
    s = DeliveryScheduler()
    s.add(op("span", "T", "child", parent="p"))
    assert s.unresolved() == [("T", "T")]
    assert s.unresolved() == []
    s.learn("T", "T", "N-T")
    assert s.unresolved() == [("T", "p")]
    s.learn("T", "p", "N-p")
    [d] = s.take(10)
    assert (d.trace_id, d.parent_span_id) == ("N-T", "N-p")


def test_retry_puts_the_op_first_in_line() -> None:
    s = DeliveryScheduler()
    s.add(op("trace", "A"))
    s.add(op("trace", "B"))
    first = s.take(1)
    s.retry(first[0].op)
    assert ids(s.take(2)) == ["A", "B"]


def test_attempted_span_gets_sibling_ids_for_its_lookup() -> None:
    s = DeliveryScheduler()
    s.add(op("trace", "T"))
    ack(s, s.take(10))
    s.add(op("span", "T", "a"))
    ack(s, s.take(10))
    again = op("span", "T", "b")
    again.attempted = True
    s.add(again)
    [d] = s.take(10)
    assert d.sibling_ids == frozenset({"N-a"})


@st.composite
def trees(draw: Any) -> tuple[list[tuple[str, str | None]], int]:
    """Span (id, parent id) lists of one trace, parents always spooled, any order."""
    count = draw(st.integers(min_value=0, max_value=25))
    spans: list[tuple[str, str | None]] = []
    for n in range(count):
        parent = draw(st.one_of(st.none(), st.integers(0, n - 1))) if n else None
        spans.append((f"s{n}", None if parent is None else f"s{parent}"))
    order = draw(st.permutations(spans))
    return list(order), draw(st.integers(0, 2**32))


@settings(max_examples=150, deadline=None)
@given(tree=trees(), width=st.integers(1, 6))
def test_any_spool_order_delivers_everything_once_in_a_valid_order(
    tree: tuple[list[tuple[str, str | None]], int], width: int
) -> None:
    spans, seed = tree
    rng = random.Random(seed)
    s = DeliveryScheduler()
    s.add(op("trace", "T"))
    for local, parent in spans:
        s.add(op("span", "T", local, parent))
    s.add(op("end", "T"))

    delivered: list[str] = []
    parents: dict[str, str | None] = {}
    inflight: list[Delivery] = []
    while s.pending:
        inflight += s.take(width - len(inflight))
        assert inflight, "stuck with work left"
        rng.shuffle(inflight)
        done = inflight.pop()
        if done.op.kind == "span":
            assert "T" in delivered
            parents[done.op.local_id] = done.parent_span_id
        delivered.append(done.op.local_id)
        ack(s, [done])

    assert sorted(delivered) == sorted(["T", "T", *(local for local, _ in spans)])
    assert delivered[0] == "T" and delivered[-1] == "T"
    for local, parent in spans:
        assert parents[local] == (f"N-{parent}" if parent else None)
        if parent:
            assert delivered.index(parent) < delivered.index(local)
