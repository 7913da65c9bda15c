"""Background delivery of traces and spans to Nexus: the agent run never waits on Nexus.

Caller threads (the flow, its task hooks) only write the record to the outbox and wake the
dispatcher; they never do HTTP. The dispatcher thread (`dispatch.Dispatcher`) adopts what
dead processes left in the outbox, orders the operations (`schedule.DeliveryScheduler`)
and hands them to a few worker threads sharing one `NexusClient`: Nexus has no batch
endpoint, so throughput comes from concurrent posts.

Retry layer: requests are retried by `NexusClient` (tenacity). The exporter only
redelivers what is still spooled after the client gave up: after a transient failure it
pauses with doubling delays; after an auth or quota error it logs one warning and pauses
for minutes (the CLI's `outbox flush` or the next process tries again).

Example:
    >>> exporter = get_exporter()
    >>> exporter.start_trace(trace)
    >>> exporter.add_span(trace.local_id, span)
    >>> exporter.end_trace(trace.local_id, "success", utcnow())
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.nexus import delivery
from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.dispatch import Dispatcher, Mailbox, OnceLogger
from nexus_bedrock_tasks.nexus.otlp import OtlpSender
from nexus_bedrock_tasks.nexus.outbox import OpKind, Outbox
from nexus_bedrock_tasks.nexus.records import SpanRecord, TraceRecord
from nexus_bedrock_tasks.nexus.redact import Redactor
from nexus_bedrock_tasks.nexus.schedule import Delivery
from nexus_bedrock_tasks.semconv import TraceStatus
from nexus_bedrock_tasks.settings import (
    DEFAULT_NEXUS_BASE_URL,
    BedrockTasksSettings,
    NexusSettings,
)

logger = logging.getLogger(__name__)

_OtlpJob = tuple[TraceRecord, list[SpanRecord]]


class NexusExporter:
    """Spools Nexus writes durably and delivers them from background threads.

    Args:
        settings: Nexus settings; `NexusSettings()` when None.
        outbox_path: the spool file; ``BedrockTasksSettings().outbox`` when None.
        client: the client to deliver with (closed by its owner, not here); one is built
            from `settings` when None.
        enabled: False makes every method a cheap no-op.
        workers: concurrent deliveries.
        redelivery_delay: first pause after Nexus was unavailable; doubles up to a minute.
        otlp: sender of the OTLP copy; built from ``settings.otlp_endpoint`` when None.
    """

    def __init__(
        self,
        settings: NexusSettings | None = None,
        outbox_path: Path | None = None,
        *,
        client: NexusClient | None = None,
        enabled: bool = True,
        workers: int = 4,
        redelivery_delay: float = 1.0,
        otlp: OtlpSender | None = None,
    ) -> None:
        self._settings = settings if settings is not None else NexusSettings()
        self._client = client
        self._owns_client = client is None
        self._otlp = otlp
        self._workers = max(1, workers)
        self._redelivery_delay = redelivery_delay
        key = self._settings.api_key
        try:
            self._redactor = (
                client.redactor
                if client is not None
                else Redactor(
                    self._settings.redact_patterns, [key.get_secret_value() if key else ""]
                )
            )
        except ConfigError as exc:
            # A bad NEXUS_REDACT_PATTERNS must not stop the agent run; nothing is exported.
            logger.warning("Nexus export disabled: %s", exc)
            self._redactor, enabled = Redactor(), False
        self._log = OnceLogger(self._redactor)
        self._box = Mailbox()
        self._work: queue.SimpleQueue[Delivery | _OtlpJob | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._state = "new"
        self._otlp_traces: dict[str, _OtlpJob] = {}
        self._outbox: Outbox | None = None
        self.enabled = enabled and self._configured(client)
        if self.enabled:
            path = outbox_path if outbox_path is not None else BedrockTasksSettings().outbox
            try:
                self._outbox = Outbox(path)
            except (OSError, sqlite3.Error) as exc:
                logger.warning("Nexus export disabled: cannot open the outbox %s: %s", path, exc)
                self.enabled = False

    def _configured(self, client: NexusClient | None) -> bool:
        settings = self._settings
        default_url = settings.base_url.rstrip("/") == DEFAULT_NEXUS_BASE_URL
        if client is None and settings.api_key is None and default_url:
            logger.warning(
                "Nexus export disabled: NEXUS_API_KEY is not set (set it, or point "
                "NEXUS_BASE_URL at a local Nexus: `nexus-bedrock local nexus`)"
            )
            return False
        return True

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the dispatcher and workers; they first deliver what earlier processes left."""
        with self._box.cond:
            if not self.enabled or self._state != "new":
                return
            self._state = "running"
        assert self._outbox is not None  # enabled implies an open outbox
        if self._client is None:
            self._client = NexusClient(self._settings)
        if self._otlp is None and self._settings.otlp_endpoint:
            self._otlp = OtlpSender(self._settings)
        dispatcher = Dispatcher(
            self._outbox,
            self._box,
            self._work.put,
            self._log,
            # Deep hand-outs: each dispatcher cycle is one outbox transaction, holding the
            # lock the agent run's thread spools under. Handing out many operations at
            # once (all marked "attempted" first) makes cycles few and big; a process that
            # dies leaves at most this many to look up in Nexus instead of re-posting.
            max_inflight=16 * self._workers,
            redelivery_delay=self._redelivery_delay,
            delay=self._settings.delivery_delay_ms / 1000,
        )
        self._threads = [threading.Thread(target=dispatcher.run, name="nexus-dispatch")]
        self._threads += [
            threading.Thread(target=self._work_loop, name=f"nexus-worker-{n}")
            for n in range(self._workers)
        ]
        for thread in self._threads:
            # Daemons: at interpreter exit the atexit hook flushes them, nothing joins them.
            thread.daemon = True
            thread.start()

    def flush(self, timeout: float) -> int:
        """Wait until everything spooled here is delivered, nothing more can go now (auth or
        quota error, refused items), or `timeout` seconds passed; returns items still pending.
        """
        deadline = time.monotonic() + timeout
        box = self._box
        with box.cond:
            if self._state != "running":
                return len(box.incoming) + box.pending
            box.kick = True
            cycle = box.cycles
            box.cond.notify_all()
            while self._threads[0].is_alive():
                # `stalled` and `pending` describe the dispatcher's last complete cycle,
                # which did not see operations spooled since.
                idle = not (box.incoming or box.busy) and (box.stalled or not box.pending)
                left = deadline - time.monotonic()
                if (box.cycles > cycle and idle) or left <= 0:
                    break
                box.progress.wait(left)
            return len(box.incoming) + box.pending

    def close(self, timeout: float = 10.0) -> int:
        """Flush for up to `timeout` s, stop the threads; returns items left in the outbox.

        Spans whose parent never came go at their trace's root first: no more can come.
        """
        deadline = time.monotonic() + timeout
        with self._box.cond:
            self._box.close_traces = True
        remaining = self.flush(timeout)
        with self._box.cond:
            if self._state == "closed":
                return remaining
            was_running = self._state == "running"
            self._state = "closed"
            self._box.stopping = True
            self._box.cond.notify_all()
            self._box.progress.notify_all()
        if was_running:
            for _ in range(self._workers):
                self._work.put(None)
            for thread in self._threads:
                thread.join(max(0.1, deadline - time.monotonic()))
        if self._owns_client and self._client is not None:
            self._client.close()
        if self._otlp is not None:
            self._otlp.close()
        if self._outbox is not None:
            self._outbox.close()
        return remaining

    # -- the caller's side: spool and signal, never HTTP --------------------------------

    def start_trace(self, trace: TraceRecord) -> None:
        """Spool the creation of `trace`."""
        if not self.enabled:
            return
        payload = delivery.trace_payload(trace, self._redactor)
        if self._otlp is not None or self._settings.otlp_endpoint:
            record = delivery.trace_from_payload(payload, trace.local_id)
            self._otlp_traces[trace.local_id] = (record, [])
        self._spool("trace", trace.local_id, trace.local_id, None, payload)

    def add_span(self, trace_local_id: str, span: SpanRecord) -> None:
        """Spool one complete span; its parent may still be unknown to Nexus."""
        self.add_spans(trace_local_id, [span])

    def redacted(self, trace: TraceRecord) -> TraceRecord:
        """`trace` as Nexus would get it: name and metadata redacted (to keep it elsewhere)."""
        return dataclasses.replace(
            trace,
            name=self._redactor.redact(trace.name),
            metadata=self._redactor.redact_value(trace.metadata),
        )

    def add_spans(self, trace_local_id: str, spans: Sequence[SpanRecord]) -> None:
        """Spool several complete spans of one trace at once (one outbox transaction)."""
        if not self.enabled or not spans:
            return
        items: list[tuple[str, str | None, dict[str, Any]]] = []
        job = self._otlp_traces.get(trace_local_id)
        for span in spans:
            payload = delivery.span_payload(span, self._redactor, self._settings.max_payload_chars)
            if job is not None:
                job[1].append(
                    delivery.span_from_payload(payload, span.local_id, span.parent_local_id)
                )
            items.append((span.local_id, span.parent_local_id, payload))
        self._spool_many("span", trace_local_id, items)

    def end_trace(self, trace_local_id: str, status: TraceStatus, ended_at: datetime) -> None:
        """Spool the trace's final status and end time (sent after all its spans)."""
        if not self.enabled:
            return
        payload = delivery.end_payload(status, ended_at)
        self._spool("end", trace_local_id, trace_local_id, None, payload)
        job = self._otlp_traces.pop(trace_local_id, None)
        if job is not None and self._state == "running":
            self._work.put((dataclasses.replace(job[0], status=status, ended_at=ended_at), job[1]))

    def _spool(
        self,
        kind: OpKind,
        trace_local_id: str,
        local_id: str,
        parent_local_id: str | None,
        payload: dict[str, Any],
    ) -> None:
        self._spool_many(kind, trace_local_id, [(local_id, parent_local_id, payload)])

    def _spool_many(
        self,
        kind: OpKind,
        trace_local_id: str,
        items: Sequence[tuple[str, str | None, dict[str, Any]]],
    ) -> None:
        assert self._outbox is not None  # enabled implies an open outbox
        if self._state == "closed":
            self._log.warn("closed", f"Nexus export is closed; {len(items)} {kind}s not spooled")
            return
        try:
            ops = self._outbox.append_many(kind, trace_local_id, items)
        except sqlite3.Error as exc:
            self._log.warn("spool", f"Nexus export: cannot write the outbox ({exc}); dropped")
            return
        box = self._box
        with box.cond:
            now = time.monotonic()
            first = not box.incoming
            if first:
                box.incoming_since = now
            box.incoming.extend(ops)
            if kind == "trace":
                # A new trace goes at once: it shows the run live, and the run's end waits
                # for its Nexus id. It is spooled as the run starts, not in its busy end.
                box.hurry = True
            # The first one after a quiet spell wakes the dispatcher even when it is to
            # wait: the dispatcher sets its alarm by it.
            if box.needs_dispatcher() and (first or box.incoming_due(now)):
                box.cond.notify()

    # -- queries -------------------------------------------------------------------------

    def nexus_trace_id(self, trace_local_id: str, timeout: float = 0.0) -> str | None:
        """The Nexus id of a trace once Nexus acknowledged it, waiting up to `timeout` s."""
        if not self.enabled:
            return None
        deadline = time.monotonic() + timeout
        box = self._box
        with box.cond:
            while trace_local_id not in box.trace_ids:
                left = deadline - time.monotonic()
                if left <= 0 or self._state != "running":
                    break
                box.progress.wait(left)
            found = box.trace_ids.get(trace_local_id)
        if found is None and self._outbox is not None and self._state != "closed":
            # Delivered by an earlier process, or too long ago to be remembered in memory.
            found = self._outbox.nexus_ids([trace_local_id]).get(trace_local_id)
        return found

    def stats(self) -> dict[str, int]:
        """Counts for tests and benchmarks: delivered, deduplicated, failed, parked, pending."""
        box = self._box
        with box.cond:
            return {
                "delivered": box.counts["delivered"],
                "deduplicated": box.counts["deduplicated"],
                "failed": box.counts["failed"],
                "parked": box.counts["parked"],
                "pending": len(box.incoming) + box.pending,
            }

    # -- worker threads ------------------------------------------------------------------

    def _work_loop(self) -> None:
        client = self._client
        assert client is not None  # start() sets it before starting threads
        hard_limit = max(256, self._settings.max_payload_chars // 8)
        while (job := self._work.get()) is not None:
            if isinstance(job, Delivery):
                outcome = delivery.deliver(client, job, hard_limit=hard_limit)
                with self._box.cond:
                    self._box.results.append(outcome)
                    if self._box.needs_dispatcher():
                        self._box.cond.notify()
            else:
                self._send_otlp(job)

    def _send_otlp(self, job: _OtlpJob) -> None:
        assert self._otlp is not None
        try:
            self._otlp.send(*job)
        except Exception as exc:  # the OTLP copy is best effort: log, never raise
            self._log.warn(f"otlp:{type(exc).__name__}", f"OTLP export failed: {exc}")


_exporter: NexusExporter | None = None
_exporter_lock = threading.Lock()
_atexit_registered = False


def get_exporter() -> NexusExporter:
    """The process-wide exporter, started on first use and flushed at interpreter exit.

    Configured from the environment (`NexusSettings`, `BedrockTasksSettings`); disabled
    when ``NEXUS_BEDROCK_EXPORT=false``.
    """
    global _exporter, _atexit_registered
    with _exporter_lock:
        if _exporter is None:
            tasks = BedrockTasksSettings()
            _exporter = NexusExporter(outbox_path=tasks.outbox, enabled=tasks.export)
            _exporter.start()
            if not _atexit_registered:
                atexit.register(_close_at_exit)
                _atexit_registered = True
        return _exporter


def shutdown_exporter(timeout: float) -> int:
    """Flush and close the process-wide exporter (if any); returns items left spooled."""
    global _exporter
    with _exporter_lock:
        exporter, _exporter = _exporter, None
    return exporter.close(timeout) if exporter is not None else 0


def _close_at_exit() -> None:
    remaining = shutdown_exporter(BedrockTasksSettings().flush_timeout_s)
    if remaining:
        print(
            f"nexus-bedrock: {remaining} items stay in the Nexus outbox; "
            "`nexus-bedrock outbox flush` delivers them",
            file=sys.stderr,
        )
