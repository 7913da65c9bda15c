"""End the traces of runs whose process died without running a hook (SIGKILL, power loss).

Open traces are recorded in the ledger while their process runs. For each one whose
process is gone, the flow run's state in Prefect decides the trace status; a run that
Prefect still shows as running is marked Crashed there first, so Prefect and Nexus agree.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.ledger import OpenTrace, ToolLedger
from nexus_bedrock_tasks.tracing import Tracer, trace_from_json

logger = logging.getLogger(__name__)
StateLookup = Callable[[str], str | None]
"""Flow run id → final state name after reconciling it (None: Prefect does not know it)."""


@dataclass(frozen=True, slots=True)
class Reconciled:
    """What `reconcile` did with one open trace."""

    trace: str
    flow_run_id: str | None
    prefect_state: str | None
    status: str

    def as_dict(self) -> dict[str, Any]:
        """JSON form for `--json`."""
        return {
            "trace": self.trace,
            "flow_run_id": self.flow_run_id,
            "prefect_state": self.prefect_state,
            "status": self.status,
        }


def process_alive(entry: OpenTrace) -> bool:
    """True when the process that opened the trace still runs here."""
    if entry.host != socket.gethostname() or entry.pid == os.getpid():
        return False
    try:
        os.kill(entry.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def status_for_state(state_name: str | None) -> tuple[semconv.TraceStatus, str]:
    """(trace status, summary finish reason) for a flow run's final state name."""
    if state_name == "Completed":
        return semconv.TRACE_SUCCESS, "unknown"  # finished, but its figures died with it
    if state_name == "TimedOut":
        return semconv.TRACE_TIMEOUT, semconv.FINISH_TIMEOUT
    return semconv.TRACE_ERROR, semconv.FINISH_ERROR


def prefect_state_lookup() -> StateLookup:
    """Read a flow run's state from the Prefect API; mark a dead running run Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    def lookup(flow_run_id: str) -> str | None:
        with get_client(sync_client=True) as client:
            try:
                run = client.read_flow_run(UUID(flow_run_id))
            except Exception as exc:
                logger.warning("cannot read flow run %s: %s", flow_run_id, exc)
                return None
            state = run.state
            if state is not None and not state.is_final():
                message = "the process died without reporting (found by nexus-bedrock reconcile)"
                client.set_flow_run_state(UUID(flow_run_id), Crashed(message=message), force=True)
                return "Crashed"
            return None if state is None else state.name

    return lookup


def reconcile(ledger: ToolLedger, tracer: Tracer, lookup: StateLookup) -> list[Reconciled]:
    """End every open trace whose process is gone; returns what was done."""
    done: list[Reconciled] = []
    for entry in ledger.open_traces():
        if process_alive(entry):
            continue
        state_name = lookup(entry.flow_run_id) if entry.flow_run_id else None
        status, reason = status_for_state(state_name)
        trace = trace_from_json(entry.trace)
        tracer.adopt(trace)
        tracer.end(trace.local_id, status=status, finish_reason=reason)
        tracer.forget(trace.local_id)
        ledger.close_trace(entry.key)
        done.append(Reconciled(trace.local_id, entry.flow_run_id, state_name, status))
    return done
