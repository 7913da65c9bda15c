"""The web page as a real headless browser renders it (Debian's `chromium`).

`--dump-dom` gives the DOM after Chromium parsed the page; a screenshot shows it lays out.
CI installs chromium (.ci/run); without it these tests fail, they do not skip.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from tests.local_nexus.conftest import Api, at
from tests.local_nexus.dom import Node, parse_html

pytestmark = pytest.mark.slow

WINDOW = (1280, 900)


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("chromium is not installed: apt-get install -y chromium (CI does this)")
    return path


def browse(url: str, profile: Path, *extra: str) -> str:
    """Run headless Chromium on `url`; its stdout."""
    result = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--no-proxy-server",
            f"--user-data-dir={profile}",
            f"--window-size={WINDOW[0]},{WINDOW[1]}",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def rendered(url: str, profile: Path) -> Node:
    return parse_html(browse(url, profile, "--dump-dom"))


class Scene:
    """Three traces: a finished one with nested spans and totals, a failed one, a running one."""

    def __init__(self, api: Api) -> None:
        self.ok = api.new_trace(
            "bedrock-agent",
            name="invoke: What is the refund policy?",
            status="success",
            started_ms=0,
            ended_at=at(2500),
        )
        drain = api.new_span(self.ok, name="task:drain", started_at=at(0), ended_at=at(2000))
        llm = api.new_span(
            self.ok,
            name="llm:orchestration",
            parent_span_id=drain,
            started_at=at(500),
            ended_at=at(1500),
            input="What is the refund policy?",
            output={"model": "claude", "input_tokens": 1200, "output_tokens": 345},
        )
        api.new_span(
            self.ok,
            name="kb:lookup",
            parent_span_id=llm,
            started_at=at(600),
            ended_at=at(800),
            output={"num_references": 2},
        )
        api.new_span(
            self.ok,
            name="summary",
            started_at=at(2000),
            ended_at=at(2500),
            output={
                "finish_reason": "end_turn",
                "input_tokens": 1200,
                "output_tokens": 345,
                "total_tokens": 1545,
                "llm_calls": 1,
                "kb_lookups": 1,
            },
        )
        self.failed = api.new_trace(
            "bedrock-agent",
            name="invoke: Break things",
            status="error",
            started_ms=60_000,
            ended_at=at(60_750),
        )
        api.new_span(
            self.failed,
            name="failure",
            status="error",
            started_at=at(60_100),
            ended_at=at(60_700),
            error="throttlingException: slow down",
        )
        api.new_span(
            self.failed,
            name="summary",
            started_at=at(60_700),
            ended_at=at(60_750),
            output='{"finish_reason": "error", "input_tokens": 10, "output_tokens": 0, '
            '"total_tokens": 10}',
        )
        self.running = api.new_trace("side-agent", name="invoke: Still thinking", started_ms=120e3)


@pytest.fixture(scope="module")
def scene() -> Iterator[tuple[LocalNexus, Scene]]:
    with run_local_nexus() as nexus, Api(nexus) as api:
        yield nexus, Scene(api)


def cells(row: Node) -> dict[str, str]:
    return {td.attrs["class"].split()[0]: td.text() for td in row.find_all("td")}


def test_trace_list_renders_newest_first_with_totals(
    scene: tuple[LocalNexus, Scene], tmp_path: Path
) -> None:
    nexus, traces = scene
    dom = rendered(nexus.url + "/", tmp_path)
    rows = dom.find_all("tr", "trace")
    assert [row.attrs["data-trace-id"] for row in rows] == [
        traces.running,
        traces.failed,
        traces.ok,
    ]
    assert [cells(row) for row in rows] == [
        {
            "name": "invoke: Still thinking",
            "agent": "side-agent",
            "status": "running",
            "started": "2026-05-01 12:02:00.000 UTC",
            "duration": "–",
            "spans": "0",
            "tokens": "–",
            "finish": "–",
        },
        {
            "name": "invoke: Break things",
            "agent": "bedrock-agent",
            "status": "error",
            "started": "2026-05-01 12:01:00.000 UTC",
            "duration": "750 ms",
            "spans": "2",
            "tokens": "10 10 in / 0 out",
            "finish": "error",
        },
        {
            "name": "invoke: What is the refund policy?",
            "agent": "bedrock-agent",
            "status": "success",
            "started": "2026-05-01 12:00:00.000 UTC",
            "duration": "2.50 s",
            "spans": "4",
            "tokens": "1,545 1,200 in / 345 out",
            "finish": "end_turn",
        },
    ]
    assert rows[2].one("a").attrs["href"] == f"/traces/{traces.ok}"
    assert dom.one(cls="total-count").text() == "3"

    failed_only = rendered(nexus.url + "/?status=error&agent=bedrock-agent", tmp_path)
    assert [r.attrs["data-trace-id"] for r in failed_only.find_all("tr", "trace")] == [
        traces.failed
    ]


def test_trace_page_renders_the_span_tree_as_a_timeline(
    scene: tuple[LocalNexus, Scene], tmp_path: Path
) -> None:
    nexus, traces = scene
    dom = rendered(f"{nexus.url}/traces/{traces.ok}", tmp_path)
    assert dom.one("h1", "trace-name").text() == "invoke: What is the refund policy?"
    facts = {fact.attrs["data-field"]: fact.one("dd").text() for fact in dom.find_all(cls="fact")}
    assert facts == {
        "agent": "bedrock-agent",
        "status": "success",
        "started_at": "2026-05-01 12:00:00.000 UTC",
        "ended_at": "2026-05-01 12:00:02.500 UTC",
        "duration": "2.50 s",
        "span_count": "4",
        "finish_reason": "end_turn",
        "input_tokens": "1,200",
        "output_tokens": "345",
        "total_tokens": "1,545",
        "llm_calls": "1",
        "kb_lookups": "1",
    }
    rows = dom.find_all(cls="span-row")
    shown = [
        (
            row.one(cls="span-name").text(),
            row.attrs["data-depth"],
            row.one(cls="span-duration").text(),
            row.one(cls="bar").attrs["style"],
        )
        for row in rows
    ]
    assert shown == [
        ("task:drain", "0", "2.00 s", "left:0.000%;width:80.000%"),
        ("llm:orchestration", "1", "1.00 s", "left:20.000%;width:40.000%"),
        ("kb:lookup", "2", "200 ms", "left:24.000%;width:8.000%"),
        ("summary", "0", "500 ms", "left:80.000%;width:20.000%"),
    ]
    llm = rows[1]
    assert [d.one("summary").text() for d in llm.find_all("details")] == ["input", "output"]
    assert llm.one("details", "input").one("pre").text() == "What is the refund policy?"
    assert '"input_tokens": 1200' in llm.one("details", "output").one("pre").text()
    assert all("open" not in d.attrs for d in llm.find_all("details"))  # collapsed


def test_failed_trace_shows_its_error(scene: tuple[LocalNexus, Scene], tmp_path: Path) -> None:
    nexus, traces = scene
    dom = rendered(f"{nexus.url}/traces/{traces.failed}", tmp_path)
    failure = dom.find_all(cls="span-row")[0]
    assert "error" in failure.classes()
    assert failure.one("details", "error").one("pre").text() == "throttlingException: slow down"


def test_trace_page_screenshot_has_the_window_size(
    scene: tuple[LocalNexus, Scene], tmp_path: Path
) -> None:
    nexus, traces = scene
    shot = tmp_path / "trace.png"
    browse(f"{nexus.url}/traces/{traces.ok}", tmp_path / "profile", f"--screenshot={shot}")
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert struct.unpack(">II", png[16:24]) == WINDOW
    assert len(png) > 20_000  # a blank page compresses to a few hundred bytes
