"""The web page's HTML, fetched over HTTP (the browser tests check the rendering)."""

from __future__ import annotations

import json

import httpx

from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from tests.local_nexus.conftest import Api, at
from tests.local_nexus.dom import Node, parse_html

HOSTILE = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"


def page(nexus: LocalNexus, path: str, **params: str) -> tuple[httpx.Response, Node]:
    # No key: the page is open to whoever can reach 127.0.0.1.
    with httpx.Client(base_url=nexus.url, trust_env=False) as http:
        response = http.get(path, params=params)
    return response, parse_html(response.text)


def test_user_content_is_escaped_everywhere(api: Api, agent: str) -> None:
    hostile_agent = agent + HOSTILE
    trace_id = api.new_trace(hostile_agent, name=HOSTILE, metadata={HOSTILE: HOSTILE})
    api.new_span(trace_id, name=HOSTILE, input=HOSTILE, output={"x": HOSTILE}, error=HOSTILE)
    api.new_span(trace_id, name="summary", output={HOSTILE: HOSTILE, "finish_reason": HOSTILE})

    for response, dom in (
        page(api.nexus, "/", agent=hostile_agent),
        page(api.nexus, f"/traces/{trace_id}"),
    ):
        assert response.status_code == 200
        assert "<script" not in response.text and "<img" not in response.text
        assert dom.find_all("script") == [] and dom.find_all("img") == []
        assert HOSTILE in dom.text()
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src" not in policy
    (row,) = page(api.nexus, "/", agent=hostile_agent)[1].find_all("tr", "trace")
    assert row.one("td", "name").text() == HOSTILE
    assert row.one("td", "agent").text() == hostile_agent


def test_list_filters_by_status_and_agent(api: Api, agent: str) -> None:
    failed = api.new_trace(agent, name="invoke: failed", status="error", started_ms=1)
    api.new_trace(agent, name="invoke: fine", status="success", started_ms=2)
    api.new_trace(agent + "-other", name="invoke: elsewhere", status="error")

    _, dom = page(api.nexus, "/", agent=agent, status="error")
    rows = dom.find_all("tr", "trace")
    assert [row.attrs["data-trace-id"] for row in rows] == [failed]
    assert dom.one(cls="total-count").text() == "1"
    selected = [o.attrs["value"] for o in dom.find_all("option") if "selected" in o.attrs]
    assert selected == ["error", agent]

    _, everything = page(api.nexus, "/", agent=agent, status="bogus")
    assert len(everything.find_all("tr", "trace")) == 2


def test_list_pages_with_an_older_link(api: Api, agent: str) -> None:
    for i in range(101):
        api.new_trace(agent, started_ms=i)
    _, first = page(api.nexus, "/", agent=agent)
    assert len(first.find_all("tr", "trace")) == 100
    older = first.one(cls="pager").one("a").attrs["href"]
    with httpx.Client(base_url=api.nexus.url, trust_env=False) as http:
        second = parse_html(http.get(older).text)
    (last,) = second.find_all("tr", "trace")
    assert last.one("td", "started").text() == "2026-05-01 12:00:00.000 UTC"
    assert second.find_all(cls="pager") == []


def test_summary_totals_read_from_json_or_json_text(api: Api, agent: str) -> None:
    summary = {"finish_reason": "max_tokens", "input_tokens": 7, "output_tokens": 5}
    as_json = api.new_trace(agent, started_ms=1)
    api.new_span(as_json, name="summary", output={**summary, "total_tokens": 12})
    as_text = api.new_trace(agent, started_ms=2)
    api.new_span(as_text, name="summary", output=json.dumps({**summary, "total_tokens": 12}))

    _, dom = page(api.nexus, "/", agent=agent)
    for row in dom.find_all("tr", "trace"):
        assert row.one("td", "tokens").one(cls="total").text() == "12"
        assert row.one("td", "finish").text() == "max_tokens"


def test_trace_page_without_summary_or_spans(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent, status="running")
    response, dom = page(api.nexus, f"/traces/{trace_id}")
    assert response.status_code == 200
    assert dom.one(cls="no-summary").text() == "No summary span (yet)."
    assert dom.find_all(cls="span-row") == []


def test_unknown_trace_page_is_404(shared_nexus: LocalNexus) -> None:
    response, dom = page(shared_nexus, "/traces/<nope>")
    assert response.status_code == 404
    assert dom.one("h1").text() == "Trace not found"
    assert "&lt;nope&gt;" in response.text


def test_span_tree_nests_by_parent(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent, status="success", ended_at=at(100))
    root = api.new_span(trace_id, name="task:drain", started_at=at(0), ended_at=at(100))
    llm = api.new_span(
        trace_id, name="llm:orchestration", parent_span_id=root, started_at=at(10), ended_at=at(60)
    )
    api.new_span(trace_id, name="kb:lookup", parent_span_id=llm, started_at=at(20), ended_at=None)
    api.new_span(trace_id, name="summary", started_at=at(100), ended_at=at(100))
    _, dom = page(api.nexus, f"/traces/{trace_id}")
    rows = [
        (row.one(cls="span-name").text(), row.attrs["data-depth"])
        for row in dom.find_all(cls="span-row")
    ]
    assert rows == [
        ("task:drain", "0"),
        ("llm:orchestration", "1"),
        ("kb:lookup", "2"),
        ("summary", "0"),
    ]
