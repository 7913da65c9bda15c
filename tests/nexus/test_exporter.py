"""NexusExporter under faults: every span arrives exactly once, the run never waits."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.exporter import NexusExporter
from nexus_bedrock_tasks.nexus.outbox import read_status
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.settings import NexusSettings
from tests.nexus.conftest import BASE_URL, T0, assert_delivered_once, make_tree, spool_tree
from tests.nexus.fake_nexus import API_KEY, FakeNexus

MakeExporter = Callable[..., NexusExporter]
MakeClient = Callable[..., NexusClient]


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_tree_is_delivered_once_with_parents_resolved(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter()
    exporter.start()
    trees = [make_tree(f"{n}/") for n in range(5)]
    for trace, spans in trees:
        spool_tree(exporter, trace, spans)

    assert exporter.flush(10) == 0
    for trace, spans in trees:
        assert_delivered_once(fake, trace, spans)
    assert exporter.stats()["delivered"] == sum(len(spans) + 2 for _, spans in trees)
    stored = fake.trace_by_local_id(trees[0][0].local_id)
    assert stored is not None
    assert exporter.nexus_trace_id(trees[0][0].local_id) == stored["id"]


def test_nexus_down_at_start_then_recovers(fake: FakeNexus, make_exporter: MakeExporter) -> None:
    fake.down = True
    exporter = make_exporter()
    exporter.start()
    trace, spans = make_tree()
    spool_tree(exporter, trace, spans)
    assert exporter.flush(0.3) == len(spans) + 2
    assert read_status(exporter._outbox.path)["last_error"]  # type: ignore[union-attr]

    fake.down = False
    assert exporter.flush(10) == 0
    assert_delivered_once(fake, trace, spans)
    assert read_status(exporter._outbox.path)["last_error"] is None  # type: ignore[union-attr]


def test_503_flapping_and_rate_limits(fake: FakeNexus, make_exporter: MakeExporter) -> None:
    fake.flap_every = 3
    fake.retry_after_429 = 5
    exporter = make_exporter()
    exporter.start()
    trees = [make_tree(f"{n}/") for n in range(8)]
    for trace, spans in trees:
        spool_tree(exporter, trace, spans)
    assert exporter.flush(15) == 0
    for trace, spans in trees:
        assert_delivered_once(fake, trace, spans)
    assert fake.retry_after_429 == 0


def test_connection_reset_after_storing_posts_nothing_twice(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    fake.reset_after_store = 6
    exporter = make_exporter()
    exporter.start()
    trees = [make_tree(f"{n}/") for n in range(3)]
    for trace, spans in trees:
        spool_tree(exporter, trace, spans)
    assert exporter.flush(10) == 0
    for trace, spans in trees:
        assert_delivered_once(fake, trace, spans)
    assert fake.reset_after_store == 0


def test_reset_outlasting_the_client_retries_is_deduplicated_on_redelivery(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    # Every POST lands, every answer is lost, and so are the client's own lookups.
    fake.reset_after_store = 1_000
    fake.reads_503 = True
    exporter = make_exporter()
    exporter.start()
    trace, spans = make_tree(spans=2)
    spool_tree(exporter, trace, spans)
    time.sleep(0.3)
    fake.reset_after_store, fake.reads_503 = 0, False
    assert exporter.flush(10) == 0
    assert_delivered_once(fake, trace, spans)
    assert exporter.stats()["deduplicated"] >= 1


def test_slow_nexus_does_not_slow_the_caller(fake: FakeNexus, make_exporter: MakeExporter) -> None:
    delay = 0.5
    fake.delay = delay
    exporter = make_exporter(workers=8)
    exporter.start()
    trace, spans = make_tree(spans=12)

    started = time.perf_counter()
    spool_tree(exporter, trace, spans)
    caller = time.perf_counter() - started

    assert caller < 0.1 * delay, f"caller waited {caller:.3f}s on a {delay}s Nexus"
    assert exporter.flush(20) == 0
    assert_delivered_once(fake, trace, spans)


@pytest.mark.slow
def test_five_second_answers(fake: FakeNexus, make_client: MakeClient, outbox_path: Path) -> None:
    fake.delay = 5.0
    settings = NexusSettings(api_key=API_KEY, base_url=BASE_URL, read_timeout_s=10.0)
    exporter = NexusExporter(settings, outbox_path, client=make_client(settings=settings))
    exporter.start()
    trace, spans = make_tree(spans=4)
    started = time.perf_counter()
    spool_tree(exporter, trace, spans)
    caller = time.perf_counter() - started
    time.sleep(0.1)  # the trace's POST is out and takes its 5 s
    fake.delay = 0.0

    assert caller < 0.1 * 5.0
    assert exporter.close(30) == 0
    assert_delivered_once(fake, trace, spans)


@pytest.mark.parametrize("fault", ["auth", "quota"])
def test_auth_and_quota_errors_keep_data_spooled_until_fixed(
    fault: str,
    fake: FakeNexus,
    make_exporter: MakeExporter,
    make_client: MakeClient,
    outbox_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    if fault == "auth":
        fake.api_key = "nxs_rotated_key_000000"
    else:
        fake.trace_limit = 1
    first = make_exporter()
    first.start()
    trees = [make_tree(f"{n}/") for n in range(3)]
    with caplog.at_level(logging.WARNING):
        for trace, spans in trees:
            spool_tree(first, trace, spans)
        started = time.monotonic()
        left = first.close(10)
    assert time.monotonic() - started < 5, "flush waited although nothing could go"
    assert left > 0
    status = read_status(outbox_path)
    assert status["pending"] == left
    assert ("Invalid API key" if fault == "auth" else "Monthly trace limit") in str(
        status["last_error"]
    )
    refusals = [w for w in warnings_of(caplog) if "Nexus refused" in w]
    assert len(refusals) == 1, refusals

    # The key is fixed / the limit lifted: the next process delivers the rest, once.
    fake.api_key, fake.trace_limit = API_KEY, None
    second = make_exporter(client=make_client())
    second.start()
    assert second.flush(10) == 0
    for trace, spans in trees:
        assert_delivered_once(fake, trace, spans)
    assert read_status(outbox_path)["pending"] == 0


def test_oversized_span_is_truncated_harder_once(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    fake.max_payload = 3_000  # below the 16k default, above the 2k of the harder cut
    exporter = make_exporter()
    exporter.start()
    trace = TraceRecord("invoke: big", "bedrock-agent", T0)
    big = SpanRecord("llm:big", T0, T0, output="y" * 10_000)
    spool_tree(exporter, trace, [big])
    assert exporter.flush(10) == 0
    [row] = fake.all_spans()
    assert len(row["output"]) == 2_000  # max_payload_chars // 8
    assert row["output"].endswith("[truncated, 10000 chars]")


def test_refused_span_is_parked_and_its_children_go_to_the_root(
    fake: FakeNexus, make_exporter: MakeExporter, caplog: pytest.LogCaptureFixture
) -> None:
    fake.max_payload = 100  # even the harder truncation (2,000) is refused
    exporter = make_exporter()
    exporter.start()
    trace = TraceRecord("invoke: x", "bedrock-agent", T0)
    parent = SpanRecord("task:big", T0, T0, output="z" * 5_000)
    child = SpanRecord("llm:small", T0, T0, parent_local_id=parent.local_id, output="ok")
    with caplog.at_level(logging.WARNING):
        spool_tree(exporter, trace, [child, parent])
        assert exporter.flush(10) == 1
    assert [(r["name"], r["parent_span_id"]) for r in fake.all_spans()] == [("llm:small", None)]
    assert fake.trace_by_local_id(trace.local_id)["status"] == "success"  # type: ignore[index]
    assert exporter.stats()["parked"] == 1
    assert sum("Nexus refused" in w for w in warnings_of(caplog)) == 1


def test_restart_delivers_what_a_dead_process_left(
    fake: FakeNexus, make_exporter: MakeExporter, make_client: MakeClient
) -> None:
    fake.down = True
    first = make_exporter()
    first.start()
    trace, spans = make_tree()
    spool_tree(first, trace, spans[:3], end=False)
    first.close(0.2)

    fake.down = False
    second = make_exporter(client=make_client())
    second.start()
    assert second.flush(10) == 0
    stored = fake.trace_by_local_id(trace.local_id)
    assert stored is not None and stored["status"] == "running"
    assert sorted(r["name"] for r in fake.all_spans()) == sorted(s.name for s in spans[:3])
    # The parent of the spooled children never came: they went to the root.
    assert all(r["parent_span_id"] is None for r in fake.all_spans() if "tool" not in r["name"])


def test_restart_finds_parents_delivered_by_the_dead_process(
    fake: FakeNexus, make_exporter: MakeExporter, make_client: MakeClient
) -> None:
    first = make_exporter()
    first.start()
    trace = TraceRecord("invoke: x", "bedrock-agent", T0)
    parent = SpanRecord("task:drain", T0, T0)
    first.start_trace(trace)
    first.add_span(trace.local_id, parent)
    assert first.flush(5) == 0
    fake.down = True
    late = SpanRecord("llm:late", T0, T0, parent_local_id=parent.local_id)
    first.add_span(trace.local_id, late)
    first.close(0.2)

    fake.down = False
    second = make_exporter(client=make_client())
    second.start()
    assert second.flush(10) == 0
    rows = {r["name"]: r for r in fake.all_spans()}
    assert rows["llm:late"]["parent_span_id"] == rows["task:drain"]["id"]


def test_posts_in_flight_when_the_process_died_are_not_repeated(
    fake: FakeNexus, make_exporter: MakeExporter, make_client: MakeClient
) -> None:
    first = make_exporter(workers=8)
    first.start()
    trace, spans = make_tree(spans=4)
    spool_tree(first, trace, spans)
    assert first.flush(5) == 0
    fake.delay = 0.3
    more = [SpanRecord(f"late:{n}", T0 + timedelta(hours=1, seconds=n), None) for n in range(6)]
    for span in more:
        first.add_span(trace.local_id, span)
    time.sleep(0.1)  # the POSTs are out, their answers not back
    first.close(0.05)
    fake.wait_idle()  # they landed after their sender "died"
    fake.delay = 0.0

    second = make_exporter(client=make_client())
    second.start()
    assert second.flush(10) == 0
    names = [r["name"] for r in fake.all_spans()]
    assert sorted(n for n in names if n.startswith("late:")) == sorted(s.name for s in more)
    assert second.stats()["deduplicated"] == len(more)


def test_secrets_never_reach_the_outbox_file(
    fake: FakeNexus, make_exporter: MakeExporter, outbox_path: Path
) -> None:
    fake.down = True
    exporter = make_exporter()
    exporter.start()
    aws_key, aws_secret = "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    trace = TraceRecord(
        f"invoke: use {API_KEY}", "bedrock-agent", T0, metadata={"prompt": f"key {aws_key}"}
    )
    span = SpanRecord(
        "action:creds",
        T0,
        T0,
        input={"aws_secret_access_key": aws_secret, "note": f"Authorization: Bearer {API_KEY}"},
        output=f"aws_secret_access_key={aws_secret}",
        error=f"failed with {API_KEY}",
    )
    spool_tree(exporter, trace, [span])
    exporter.flush(0.2)
    raw = b"".join(
        p.read_bytes() for p in outbox_path.parent.glob(f"{outbox_path.name}*") if p.is_file()
    )
    assert b"[REDACTED]" in raw
    for secret in (API_KEY, aws_key, aws_secret):
        assert secret.encode() not in raw
    exporter.close(0.1)


def test_disabled_exporter_is_a_no_op(outbox_path: Path) -> None:
    exporter = NexusExporter(outbox_path=outbox_path, enabled=False)
    exporter.start()
    exporter.start_trace(TraceRecord("t", "a", T0))
    assert exporter.flush(1) == 0 and exporter.close() == 0
    assert not outbox_path.exists()


def test_missing_key_with_the_hosted_url_disables_export_with_one_line(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        exporter = NexusExporter(NexusSettings(), outbox_path)
    exporter.start_trace(TraceRecord("t", "a", T0))
    assert not exporter.enabled and not outbox_path.exists()
    assert len(warnings_of(caplog)) == 1 and "NEXUS_API_KEY" in warnings_of(caplog)[0]
    exporter.close()


def test_bad_redaction_pattern_disables_export_instead_of_failing_the_run(
    outbox_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = NexusSettings(api_key=API_KEY, base_url=BASE_URL, redact_patterns=["(unclosed"])
    with caplog.at_level(logging.WARNING):
        exporter = NexusExporter(settings, outbox_path)
    exporter.start()
    exporter.start_trace(TraceRecord("t", "a", T0))
    assert not exporter.enabled and exporter.close() == 0
    assert "NEXUS_REDACT_PATTERNS" in warnings_of(caplog)[0]


def test_spans_spooled_before_start_are_delivered_once(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter()
    trace, spans = make_tree()
    spool_tree(exporter, trace, spans)
    exporter.start()
    assert exporter.flush(10) == 0
    assert_delivered_once(fake, trace, spans)


def test_nexus_trace_id_waits_for_the_acknowledgement(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    fake.delay = 0.2
    exporter = make_exporter()
    exporter.start()
    trace = TraceRecord("t", "bedrock-agent", T0)
    exporter.start_trace(trace)
    assert exporter.nexus_trace_id(trace.local_id) is None
    found = exporter.nexus_trace_id(trace.local_id, timeout=5)
    assert found is not None and found in fake.traces


def test_spans_added_together_are_delivered_once_like_single_ones(
    fake: FakeNexus, make_exporter: MakeExporter
) -> None:
    exporter = make_exporter()
    exporter.start()
    trace, spans = make_tree("batch/")
    exporter.start_trace(trace)
    exporter.add_spans(trace.local_id, spans[:3])
    exporter.add_spans(trace.local_id, [])
    exporter.add_spans(trace.local_id, spans[3:])
    exporter.end_trace(trace.local_id, "success", T0 + timedelta(seconds=90))
    assert exporter.flush(10) == 0
    assert_delivered_once(fake, trace, spans)
    assert exporter.stats()["delivered"] == len(spans) + 2


# -- the delivery delay: spans wait for company while nothing is in flight ---------------


def delayed(settings: NexusSettings, ms: float) -> NexusSettings:
    return settings.model_copy(update={"delivery_delay_ms": ms})


def wait_for(check: Callable[[], bool], timeout: float) -> float:
    """Seconds until `check()` held; fails after `timeout`."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, "not within the timeout"
        time.sleep(0.005)
    return time.monotonic() - started


def with_trace_in_nexus(
    fake: FakeNexus, exporter: NexusExporter, prefix: str
) -> tuple[TraceRecord, list[SpanRecord]]:
    """Start `exporter`, spool a trace and wait until Nexus has it: a new trace goes at once."""
    exporter.start()
    trace, spans = make_tree(prefix)
    exporter.start_trace(trace)
    assert wait_for(lambda: fake.trace_by_local_id(trace.local_id) is not None, 5) < 2
    return trace, spans


def test_spans_wait_for_the_delivery_delay_and_then_go_without_a_flush(
    fake: FakeNexus, make_exporter: MakeExporter, settings: NexusSettings
) -> None:
    exporter = make_exporter(settings=delayed(settings, 400))
    trace, spans = with_trace_in_nexus(fake, exporter, "delay/")
    for span in spans:
        exporter.add_span(trace.local_id, span)
    exporter.end_trace(trace.local_id, "success", T0 + timedelta(seconds=90))
    time.sleep(0.25)
    assert fake.all_spans() == []  # still gathering
    waited = wait_for(lambda: len(fake.all_spans()) == len(spans), 5)
    # The rest of the 0.4 s, then the spans, without a flush: the dispatcher set its alarm
    # by the delay (its idle wake-up, 2 s, would come far later).
    assert 0.05 < waited < 0.9
    wait_for(lambda: exporter.stats()["pending"] == 0, 5)
    assert_delivered_once(fake, trace, spans)


def test_a_new_trace_goes_at_once_and_its_spans_wait(
    fake: FakeNexus, make_exporter: MakeExporter, settings: NexusSettings
) -> None:
    exporter = make_exporter(settings=delayed(settings, 60_000))
    trace, spans = with_trace_in_nexus(fake, exporter, "trace-first/")
    exporter.add_span(trace.local_id, spans[0])
    time.sleep(0.3)
    assert fake.all_spans() == []
    assert exporter.stats()["pending"] == 1


def test_flush_does_not_wait_for_the_delay(
    fake: FakeNexus, make_exporter: MakeExporter, settings: NexusSettings
) -> None:
    exporter = make_exporter(settings=delayed(settings, 60_000))
    exporter.start()
    trace, spans = make_tree("flush/")
    spool_tree(exporter, trace, spans)
    started = time.monotonic()
    assert exporter.flush(10) == 0
    assert time.monotonic() - started < 5
    assert_delivered_once(fake, trace, spans)


def test_a_full_batch_goes_without_waiting(
    fake: FakeNexus, make_exporter: MakeExporter, settings: NexusSettings
) -> None:
    exporter = make_exporter(settings=delayed(settings, 60_000))
    trace, _ = with_trace_in_nexus(fake, exporter, "batch/")
    many = [
        SpanRecord(f"batch:{n}", T0 + timedelta(seconds=n), T0 + timedelta(seconds=n + 1))
        for n in range(40)  # more than half the 64 deliveries 4 workers may have out
    ]
    exporter.add_spans(trace.local_id, many)
    wait_for(lambda: len(fake.all_spans()) == 40, 10)


def test_spans_do_not_wait_while_deliveries_are_in_flight(
    fake: FakeNexus, make_exporter: MakeExporter, settings: NexusSettings
) -> None:
    exporter = make_exporter(settings=delayed(settings, 60_000))
    first, _ = with_trace_in_nexus(fake, exporter, "first/")
    fake.delay = 1.0
    second, _ = make_tree("second/")
    exporter.start_trace(second)  # in flight for a second
    wait_for(lambda: fake.in_flight > 0, 5)
    exporter.add_span(first.local_id, SpanRecord("busy", T0, T0 + timedelta(seconds=1)))
    # Handed out at once, next to the trace in flight: stored after one second, not after
    # the trace's answer came back (two seconds) or the delay (a minute).
    assert wait_for(lambda: len(fake.all_spans()) == 1, 10) < 1.7
