"""The fault suite's harness: one `Scenario` per test, figures counted independently.

Each scenario gets a fresh local Nexus (fault knobs on, its own API key), its own outbox,
tool ledger and tool log, and AWS credentials that look real, so that a leak would be
found. What the tracer spooled is read from the outbox file (every span it ever wrote
stays there, as a pending row or as an acknowledged id); what Nexus holds is read from
the local Nexus; tool executions are read from the tool log. `Scenario.record` adds one
row to the session's `Collector`, which writes RELIABILITY.md when `NBT_FAULTS_REPORT`
names a file. The size is small by default, large with `NBT_FAULTS_SCALE=full`.
"""

from __future__ import annotations

import logging
import os
import platform
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from nexus_bedrock_tasks.nexus.exporter import NexusExporter
from nexus_bedrock_tasks.results import InvocationFailed, InvocationResult
from nexus_bedrock_tasks.settings import NexusSettings
from nexus_bedrock_tasks.tools import load_tools
from nexus_bedrock_tasks.tracing import Tracer, set_tracer
from tests.flow.conftest import (  # noqa: F401 - fixtures
    PREFECT_SOCKET_WARNINGS,
    LoopThread,
    _collect_prefect_sockets,
    aws_env,
    emulator,
    flow_loop,
    restored_tool_registry,
)
from tests.flow.test_process_signals import TRIP_TOOLS

FULL = os.environ.get("NBT_FAULTS_SCALE", "small") == "full"
SCALE = "full" if FULL else "small"

# Secrets that look real: a leak of any of them anywhere fails the scenario.
AWS_KEY_ID = "AKIAFAULTSUITE7Q2XZ9"
AWS_SECRET = "fAuLtSuItEsEcReTkEy/0123456789+abcdefGHIJ"
NEXUS_KEY = "nxs_faultsuite_5b1f0c2e9d7a4411"
SECRETS = {
    "AWS access key id": AWS_KEY_ID,
    "AWS secret key": AWS_SECRET,
    "Nexus API key": NEXUS_KEY,
}

TRIP = {"agent_id": "TRIP000001", "agent_alias_id": "TSTALIASID"}
DEMO = {"agent_id": "DEMO000001", "agent_alias_id": "TSTALIASID"}
# A completed execution logs one of these (find_hotels logs "start" and "done").
FINISHED_TOOL_LINES = ("check_dates ", "get_forecast ", "find_hotels done ", "reserve ")


def scaled(small: int, full: int) -> int:
    """`small` by default, `full` with NBT_FAULTS_SCALE=full."""
    return full if FULL else small


@dataclass
class Row:
    """One scenario's figures."""

    group: str
    name: str
    runs: int
    outcome: str
    spans_expected: int
    spans_delivered: int
    spans_kept: int
    duplicates: int
    tools_expected: int
    tools_happened: int
    secrets: list[str]
    how: str
    ok: bool
    bug: str | None = None


@dataclass
class Collector:
    """Rows of the session, written as markdown at its end."""

    rows: list[Row] = field(default_factory=list)

    def write(self, path: Path) -> None:
        """Write RELIABILITY.md."""
        versions = ", ".join(
            f"{name} {metadata.version(name)}"
            for name in ("prefect", "boto3", "httpx", "nexus-bedrock-tasks")
        )
        lines = [
            "# Reliability: the fault suite's figures",
            "",
            "Written by `make faults` (`NBT_FAULTS_SCALE=full`, tests in `tests/faults/`); "
            "`make test` runs the same scenarios at small sizes. Every row is a test that "
            "fails when its figures are wrong: spans delivered to Nexus must equal the spans "
            "the tracer spooled (counted in the outbox file, not by the exporter), no span "
            "may be stored twice, every tool call must have run exactly as often as "
            "expected (counted in the tools' own log file), and no secret (the AWS key id "
            "and secret key the processes run with, the Nexus API key) may appear in logs, "
            "process output, spans, Prefect artifacts, the outbox or any other file the "
            "scenario wrote, the tool ledger included (it keeps the redacted trace record "
            "of a running invocation for `reconcile`).",
            "",
            f"- Date: {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- Machine: {platform.node()}, {platform.machine()}, {os.cpu_count()} CPU(s), "
            f"{platform.system()} {platform.release()}",
            f"- Python {platform.python_version()}; {versions}",
            f"- Scale: {SCALE}",
            "",
            "| group | scenario | runs | outcome | spans expected | delivered | kept in "
            "outbox | duplicates | tools expected | tools run | secrets found | result |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            outcome = row.outcome.replace("|", "\\|")
            lines.append(
                f"| {row.group} | {row.name} | {row.runs} | {outcome} | "
                f"{row.spans_expected} | {row.spans_delivered} | {row.spans_kept} | "
                f"{row.duplicates} | {row.tools_expected} | {row.tools_happened} | "
                f"{len(row.secrets)} | {_verdict(row)} |"
            )
        lines += ["", "## How each fault is injected", ""]
        for row in self.rows:
            lines += [f"**{row.group} — {row.name}.** {row.how}", ""]
        bugs = [row for row in self.rows if row.bug]
        if bugs:
            lines += ["## Known bugs (the scenario's test is a strict xfail)", ""]
            lines += [f"- **{row.name}**: {row.bug}" for row in bugs] + [""]
        path.write_text("\n".join(lines))


def _verdict(row: Row) -> str:
    if row.ok:
        return "pass"
    return "**FAIL** (known bug, xfail)" if row.bug else "**FAIL**"


_COLLECTOR = Collector()


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    """The session's rows; RELIABILITY.md is written at the end when asked for."""
    yield _COLLECTOR
    target = os.environ.get("NBT_FAULTS_REPORT")
    if target and _COLLECTOR.rows:
        _COLLECTOR.write(Path(target))


class LogCapture(logging.Handler):
    """Every log record of the process while a scenario runs, formatted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + logging.Formatter().formatException(record.exc_info)
        self.lines.append(text)


def outbox_files(path: Path) -> list[Path]:
    """The SQLite file and its WAL/SHM companions."""
    return [p for p in path.parent.glob(f"{path.name}*") if p.is_file()]


def spooled_spans(outbox: Path, trace_ids: set[str]) -> tuple[set[str], set[str]]:
    """(span local ids ever spooled in `outbox`, those still pending there).

    Acknowledged rows leave `ops` but keep their id in `ids`; trace ids are in `ids`
    too, so the trace local ids are removed.
    """
    if not outbox.exists():
        return set(), set()
    conn = sqlite3.connect(f"file:{outbox}?mode=ro", uri=True)
    try:
        ops = conn.execute("SELECT kind, trace_local_id, local_id FROM ops").fetchall()
        acked = {row[0] for row in conn.execute("SELECT local_id FROM ids")}
    finally:
        conn.close()
    traces = trace_ids | {row[1] for row in ops}
    pending = {row[2] for row in ops if row[0] == "span"}
    return (acked | pending) - traces, pending


class Scenario:
    """The parts and the bookkeeping of one fault scenario."""

    def __init__(
        self,
        group: str,
        name: str,
        how: str,
        nexus: LocalNexus,
        tmp: Path,
        loop: LoopThread,
        collector: Collector,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        self.group, self.name, self.how = group, name, how
        self.nexus, self.tmp, self.loop, self.collector = nexus, tmp, loop, collector
        self.monkeypatch = monkeypatch
        self.outbox = tmp / "outbox.sqlite3"
        self.ledger = tmp / "ledger.sqlite3"
        self.tool_log = tmp / "tools.log"
        self.texts: list[tuple[str, str]] = []  # (source, text) to scan for secrets
        self.logs = LogCapture()
        self.exporter: NexusExporter | None = None
        self.activate()

    def activate(self) -> None:
        """Point the process's ledger, outbox and tool log at this scenario's files."""
        self.monkeypatch.setenv("NEXUS_BEDROCK_TOOL_LEDGER", str(self.ledger))
        self.monkeypatch.setenv("NEXUS_BEDROCK_OUTBOX", str(self.outbox))
        self.monkeypatch.setenv("TRIP_TOOL_LOG", str(self.tool_log))

    # -- export ------------------------------------------------------------------------

    def settings(self, base_url: str | None = None, **options: Any) -> NexusSettings:
        return NexusSettings(
            base_url=base_url or self.nexus.url,
            api_key=self.nexus.api_key,
            agent_id="bedrock-agent",
            **options,
        )

    def start_export(
        self, settings: NexusSettings | None = None, outbox: Path | None = None
    ) -> NexusExporter:
        """A tracer for in-process flows, exporting through `outbox` (the scenario's)."""
        self.stop_export(0)
        exporter = NexusExporter(
            settings or self.settings(), outbox or self.outbox, redelivery_delay=0.05
        )
        exporter.start()
        set_tracer(Tracer(exporter))
        self.exporter = exporter
        return exporter

    def stop_export(self, timeout: float) -> int:
        """Flush up to `timeout` s and close; returns the items left in the outbox."""
        if self.exporter is None:
            return 0
        left = self.exporter.close(timeout)
        set_tracer(None)
        self.exporter = None
        return left

    def flush(self, timeout: float = 60) -> int:
        assert self.exporter is not None
        return self.exporter.flush(timeout)

    # -- runs --------------------------------------------------------------------------

    def invoke(self, **kwargs: Any) -> InvocationResult:
        """One in-process invocation flow; a failed one returns its result too."""
        from flows.invoke_agent import invoke_agent_flow

        try:
            result: InvocationResult = self.loop.run(invoke_agent_flow(**kwargs))
        except InvocationFailed as failed:
            return failed.result
        return result

    def cli(self, args: list[str], env: dict[str, str], **popen: Any) -> subprocess.Popen[str]:
        """`nexus-bedrock ARGS` as a real process (output captured for the secret scan)."""
        command = [sys.executable, "-m", "nexus_bedrock_tasks.cli", *args]
        return subprocess.Popen(
            command,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **popen,
        )

    def process_env(self, prefect_api_url: str, **extra: str) -> dict[str, str]:
        """Environment of a CLI process of this scenario."""
        env = dict(os.environ)
        env.update(
            {
                "PREFECT_API_URL": prefect_api_url,
                "NEXUS_BASE_URL": self.nexus.url,
                "NEXUS_API_KEY": self.nexus.api_key,
                "NEXUS_BEDROCK_OUTBOX": str(self.outbox),
                "NEXUS_BEDROCK_TOOL_LEDGER": str(self.ledger),
                "TRIP_TOOL_LOG": str(self.tool_log),
                "PYTHONWARNINGS": "ignore",
                **extra,
            }
        )
        return env

    # -- what happened -----------------------------------------------------------------

    def traces(self) -> list[dict[str, Any]]:
        """Every trace (with spans) the scenario's Nexus holds."""
        headers = {"Authorization": f"Bearer {self.nexus.api_key}"}
        rows: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": 200, **({"after": after} if after else {})}
            page = httpx.get(
                f"{self.nexus.url}/api/v1/traces", params=params, headers=headers, timeout=30
            ).json()
            rows += page
            if len(page) < 200:
                break
            after = page[-1]["id"]
        return [
            httpx.get(
                f"{self.nexus.url}/api/v1/traces/{row['id']}", headers=headers, timeout=30
            ).json()
            for row in rows
        ]

    def tool_lines(self) -> list[str]:
        return self.tool_log.read_text().splitlines() if self.tool_log.exists() else []

    def tools_finished(self) -> int:
        return sum(line.startswith(FINISHED_TOOL_LINES) for line in self.tool_lines())

    def secrets_found(self, outboxes: list[Path]) -> list[str]:
        """`source: secret` for every secret found in logs, spans, artifacts, files."""
        sources = list(self.texts)
        sources.append(("logs", "\n".join(self.logs.lines)))
        for trace in self.traces():
            sources.append(("spans", repr(trace)))
        sources.append(("artifacts", _artifacts_text()))
        found: list[str] = []
        for source, text in sources:
            found += [f"{source}: {label}" for label, secret in SECRETS.items() if secret in text]
        files = {p for box in outboxes for p in outbox_files(box)}
        # The tool ledger is scanned too, though tools' own inputs and results stay in it
        # as Bedrock sent and got them (a secret a tool returns is the user's business).
        files |= {p for p in self.tmp.rglob("*") if p.is_file()}
        for path in sorted(files):
            raw = path.read_bytes()
            found += [
                f"{path.name}: {label}"
                for label, secret in SECRETS.items()
                if secret.encode() in raw
            ]
        return found

    def record(
        self,
        *,
        runs: int,
        outcome: str,
        outcome_ok: bool,
        tools_expected: int,
        outboxes: list[Path] | None = None,
        kept_expected: int = 0,
        bug: str | None = None,
    ) -> Row:
        """Count everything, add the row, and fail the test when a figure is wrong."""
        boxes = outboxes or [self.outbox]
        traces = self.traces()
        trace_ids = {t["metadata"].get("nexus_bedrock_trace_id") for t in traces} - {None}
        expected: set[str] = set()
        kept: set[str] = set()
        for box in boxes:
            spooled, pending = spooled_spans(box, {str(t) for t in trace_ids})
            expected |= spooled
            kept |= pending
        spans = [(t["id"], s) for t in traces for s in t["spans"]]
        keys = [
            (tid, s["name"], s["started_at"], s["parent_span_id"], repr(s["input"]),
             repr(s["output"]))
            for tid, s in spans
        ]  # fmt: skip
        duplicates = len(keys) - len(set(keys))
        secrets = self.secrets_found(boxes)
        happened = self.tools_finished()
        unended = [t["id"] for t in traces if not t["ended_at"] or t["status"] == "running"]
        ok = (
            outcome_ok
            and len(spans) + len(kept) == len(expected)
            and len(kept) == kept_expected
            and duplicates == 0
            and happened == tools_expected
            and not secrets
            and not unended
        )
        row = Row(
            group=self.group, name=self.name, runs=runs, outcome=outcome,
            spans_expected=len(expected), spans_delivered=len(spans), spans_kept=len(kept),
            duplicates=duplicates, tools_expected=tools_expected, tools_happened=happened,
            secrets=secrets, how=self.how, ok=ok, bug=bug,
        )  # fmt: skip
        self.collector.rows.append(row)
        assert outcome_ok, f"{self.name}: {outcome}"
        assert duplicates == 0, f"{self.name}: {duplicates} span(s) stored twice"
        assert len(spans) + len(kept) == len(expected), (
            f"{self.name}: {len(expected)} spans spooled, {len(spans)} in Nexus, "
            f"{len(kept)} kept in the outbox"
        )
        assert len(kept) == kept_expected, f"{self.name}: {len(kept)} span(s) still spooled"
        assert happened == tools_expected, (
            f"{self.name}: {happened} tool executions, expected {tools_expected}: "
            f"{self.tool_lines()}"
        )
        assert not secrets, f"{self.name}: secrets found: {secrets}"
        assert not unended, f"{self.name}: traces never ended: {unended}"
        return row


def _artifacts_text() -> str:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return "\n".join(repr(a.model_dump()) for a in client.read_artifacts())


@pytest.fixture
def fault_aws(aws_env: str, monkeypatch: pytest.MonkeyPatch) -> str:  # noqa: F811 - fixture
    """The emulator, reached with credentials that look real (so a leak is findable)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
    return aws_env


@pytest.fixture
def scenario_factory(
    prefect_backend: None,
    fault_aws: str,
    flow_loop: LoopThread,  # noqa: F811 - fixture
    collector: Collector,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """`make(group, name, how)` → a `Scenario` with its own local Nexus (faults on)."""
    stack = ExitStack()
    made: list[Scenario] = []
    watched = [logging.getLogger(), logging.getLogger("prefect")]

    def make(group: str, name: str, how: str, **nexus_options: Any) -> Scenario:
        nexus = stack.enter_context(
            run_local_nexus(api_key=NEXUS_KEY, faults=True, **nexus_options)
        )
        tmp = tmp_path / f"s{len(made)}"
        tmp.mkdir()
        scenario = Scenario(group, name, how, nexus, tmp, flow_loop, collector, monkeypatch)
        for logger in watched:
            logger.addHandler(scenario.logs)
        made.append(scenario)
        return scenario

    try:
        yield make
    finally:
        for scenario in made:
            scenario.stop_export(5)
            for logger in watched:
                logger.removeHandler(scenario.logs)
        stack.close()


@pytest.fixture
def trip_registry() -> Iterator[None]:
    """The TRIP agent's logging tools registered; the registry restored afterwards."""
    with restored_tool_registry():
        load_tools(str(TRIP_TOOLS))
        yield
