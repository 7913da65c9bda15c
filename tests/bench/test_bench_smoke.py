"""The benchmark code at tiny sizes, so it does not rot: keys, baselines, sane numbers.

No timing thresholds: `make bench` measures; this only checks that every figure comes out
with its baseline (or a reason), against in-process servers and Prefect's test harness.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.figures import TARGETS, TINY
from benchmarks.harness import inprocess_services
from benchmarks.report import (
    BEGIN_MARKER,
    END_MARKER,
    environment,
    results_json,
    write_markdown,
    write_results,
)
from benchmarks.run import run_benchmarks

pytestmark = [
    pytest.mark.slow,
    # Prefect's API clients leave sockets to its test server for the garbage collector.
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket:ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]
# Figures that are a difference of two noisy medians may come out at or below zero.
SIGNED = {"tracing_overhead_ratio"}


def _positive_medians(node: object) -> list[float]:
    """Every `median` in the raw sub-figures."""
    found: list[float] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "median" and isinstance(value, int | float):
                found.append(float(value))
            else:
                found += _positive_medians(value)
    elif isinstance(node, list):
        for item in node:
            found += _positive_medians(item)
    return found


@pytest.mark.timeout(120)
def test_every_figure_comes_with_its_baseline(
    prefect_backend: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.settings import PREFECT_API_URL

    # The flow builds its own boto3 client from the standard settings (the emulator's
    # endpoint is a flow parameter).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")

    logged: list[str] = []
    with inprocess_services(tmp_path, PREFECT_API_URL.value()) as services:
        figures = run_benchmarks(services, TINY, set(TARGETS), tmp_path, log=logged.append)
    document = results_json(figures, environment(), "tiny", services.prefect, services.notes)

    assert [key for key in document if key in TARGETS] == list(TARGETS)
    for key in TARGETS:
        details = document["details"][key]
        value = document[key]
        if value is None:
            assert details["reason"], f"{key} is null without a reason"
            continue
        assert details["reason"] is None
        assert isinstance(value, int | float) and math.isfinite(value), key
        assert key in SIGNED or value > 0, f"{key} = {value}"
        assert details["measured"] and details["baseline"], key
        # Inconclusive (None) only with the interval that makes it so.
        assert details["met"] in (True, False) or details["value_range"], key
        medians = _positive_medians(details["raw"])
        assert all(m > 0 for m in medians), (key, medians)
    # What must be measurable with the in-process services and the test harness.
    for key in ("overhead_ratio", "slow_nexus_ratio", "export_spans_per_s", "parse_ratio"):
        assert document[key] is not None, document["details"][key]["reason"]
    assert document["cli_overhead_s"] is not None, document["details"]["cli_overhead_s"]
    burst = document["details"]["export_spans_per_s"]["raw"]["burst"]
    assert burst["left_after_flush"] == 0 and burst["spans"] >= TINY.burst_invocations
    assert any(line.startswith("bench: invocation done") for line in logged)

    results = tmp_path / "results.json"
    write_results(results, document)
    assert json.loads(results.read_text())["parse_ratio"] == document["parse_ratio"]
    markdown = tmp_path / "BENCHMARKS.md"
    markdown.write_text(f"# Benchmarks\n\nprose\n\n{BEGIN_MARKER}\nold\n{END_MARKER}\n\nmore\n")
    write_markdown(markdown, document)
    text = markdown.read_text()
    assert "old" not in text and "prose" in text and text.rstrip().endswith("more")
    assert all(f"`{key}`" in text for key in TARGETS)
