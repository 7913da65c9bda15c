"""Raw-HTTP contract of the local server: auth, validation, errors, reads, pagination.

Expected bodies are the hosted service's, character for character (see NEXUS_API.md).
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from tests.local_nexus.conftest import Api, at, trace_body

REQUIRED = "Required, must be a string"
ISO_REQUIRED = "Must be ISO 8601 format (e.g. 2026-04-05T12:00:00Z)"
ISO_OPTIONAL = "Must be ISO 8601 format if provided"
TRACE_KEYS = {
    "id",
    "agent_name",
    "status",
    "started_at",
    "ended_at",
    "duration_ms",
    "span_count",
    "metadata",
}
SPAN_KEYS = {
    "id",
    "name",
    "parent_span_id",
    "status",
    "started_at",
    "ended_at",
    "input",
    "output",
    "error",
}


def fields_of(response: httpx.Response) -> dict[str, str]:
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "Validation failed"
    fields: dict[str, str] = body["fields"]
    return fields


# -- auth ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/traces"),
        ("GET", "/api/v1/traces"),
        ("GET", "/api/v1/traces/some-id"),
        ("PATCH", "/api/v1/traces/some-id"),
        ("POST", "/api/v1/traces/some-id/spans"),
        ("POST", "/v1/traces"),
    ],
)
@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer nxs_wrong", "bearer nxs_local_dev_key", "Basic nxs_local_dev_key", "Bearer"],
)
def test_missing_or_wrong_key_is_401(
    shared_nexus: LocalNexus, method: str, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=shared_nexus.url, trust_env=False) as http:
        response = http.request(method, path, headers=headers, json={})
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid API key"}


def test_otlp_takes_x_api_key_or_bearer(shared_nexus: LocalNexus) -> None:
    body: dict[str, Any] = {"resourceSpans": []}
    with httpx.Client(base_url=shared_nexus.url, trust_env=False) as http:
        by_header = http.post("/v1/traces", json=body, headers={"x-api-key": shared_nexus.api_key})
        by_bearer = http.post(
            "/v1/traces", json=body, headers={"Authorization": f"Bearer {shared_nexus.api_key}"}
        )
        wrong = http.post("/v1/traces", json=body, headers={"x-api-key": "nxs_wrong"})
    assert (by_header.status_code, by_header.json()) == (200, {})
    assert (by_bearer.status_code, by_bearer.json()) == (200, {})
    assert (wrong.status_code, wrong.json()) == (401, {"error": "Invalid API key"})


# -- POST /api/v1/traces --------------------------------------------------------------


def test_create_trace_answers_201_with_the_id(api: Api, agent: str) -> None:
    response = api.http.post("/api/v1/traces", json=trace_body(agent))
    assert response.status_code == 201
    assert set(response.json()) == {"trace_id"}
    assert api.detail(response.json()["trace_id"])["agent_name"] == agent


def test_create_trace_reports_every_missing_field(api: Api) -> None:
    assert fields_of(api.http.post("/api/v1/traces", json={})) == {
        "agent_id": REQUIRED,
        "name": REQUIRED,
        "status": REQUIRED,
        "started_at": REQUIRED,
    }


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"agent_id": ""}, {"agent_id": REQUIRED}),
        ({"name": 42}, {"name": REQUIRED}),
        ({"status": "ok"}, {"status": "Must be one of: running, success, error, timeout"}),
        ({"started_at": "2026-05-01 12:00:00Z"}, {"started_at": ISO_REQUIRED}),
        ({"started_at": "2026-05-01T12:00:00"}, {"started_at": ISO_REQUIRED}),
        ({"ended_at": "yesterday"}, {"ended_at": ISO_OPTIONAL}),
        ({"ended_at": 1714564800}, {"ended_at": ISO_OPTIONAL}),
    ],
)
def test_create_trace_field_errors(
    api: Api, agent: str, override: dict[str, Any], expected: dict[str, str]
) -> None:
    assert (
        fields_of(api.http.post("/api/v1/traces", json=trace_body(agent, **override))) == expected
    )


@pytest.mark.parametrize(
    "started_at",
    ["2026-05-01T12:00:00Z", "2026-05-01T14:00:00.123456+02:00", "2026-05-01T07:00:00.5-05:00"],
)
def test_iso_times_with_offsets_and_any_precision_are_accepted(
    api: Api, agent: str, started_at: str
) -> None:
    trace_id = api.new_trace(agent, started_at=started_at, ended_at=None)
    assert api.detail(trace_id)["started_at"] == started_at


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "Invalid JSON body"),
        (b"", "Invalid JSON body"),
        (b'"a string"', "Body must be a JSON object"),
        (b"null", "Body must be a JSON object"),
    ],
)
def test_malformed_bodies_are_400(api: Api, content: bytes, message: str) -> None:
    response = api.http.post("/api/v1/traces", content=content)
    assert (response.status_code, response.json()) == (400, {"error": message})


def test_metadata_is_stored_as_given(api: Api, agent: str) -> None:
    metadata = {"session_id": "s", "turn": 3, "nested": {"list": [1, "two", None]}, "ok": True}
    trace_id = api.new_trace(agent, metadata=metadata)
    assert api.detail(trace_id)["metadata"] == metadata
    assert api.detail(api.new_trace(agent))["metadata"] is None


# -- PATCH /api/v1/traces/:id ---------------------------------------------------------


def test_patch_sets_status_and_end(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent)
    response = api.http.patch(
        f"/api/v1/traces/{trace_id}", json={"status": "success", "ended_at": at(1500)}
    )
    assert (response.status_code, response.json()) == (200, {"trace_id": trace_id})
    detail = api.detail(trace_id)
    assert (detail["status"], detail["ended_at"], detail["duration_ms"]) == (
        "success",
        at(1500),
        1500,
    )


def test_patch_without_status_or_end_is_no_fields_to_update(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent, metadata={"kept": True})
    for body in ({}, {"metadata": {"replaced": True}}, {"ended_at": None}):
        response = api.http.patch(f"/api/v1/traces/{trace_id}", json=body)
        assert (response.status_code, response.json()) == (400, {"error": "No fields to update"})
    assert api.detail(trace_id)["metadata"] == {"kept": True}


def test_patch_ignores_metadata(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent, metadata={"kept": True})
    api.http.patch(f"/api/v1/traces/{trace_id}", json={"status": "error", "metadata": {"x": 1}})
    detail = api.detail(trace_id)
    assert (detail["status"], detail["metadata"]) == ("error", {"kept": True})


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"status": "done"}, {"status": "Must be one of: running, success, error, timeout"}),
        ({"status": None}, {"status": "Must be one of: running, success, error, timeout"}),
        ({"ended_at": "soon"}, {"ended_at": ISO_OPTIONAL}),
    ],
)
def test_patch_field_errors(
    api: Api, agent: str, body: dict[str, Any], expected: dict[str, str]
) -> None:
    trace_id = api.new_trace(agent)
    assert fields_of(api.http.patch(f"/api/v1/traces/{trace_id}", json=body)) == expected


def test_unknown_trace_is_404(api: Api) -> None:
    for response in (
        api.http.patch("/api/v1/traces/nope", json={"status": "success"}),
        api.http.post("/api/v1/traces/nope/spans", json={}),
        api.http.get("/api/v1/traces/nope"),
    ):
        assert (response.status_code, response.json()) == (404, {"error": "Trace not found"})


# -- spans ----------------------------------------------------------------------------


def test_span_field_errors(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent)
    path = f"/api/v1/traces/{trace_id}/spans"
    assert fields_of(api.http.post(path, json={})) == {
        "name": REQUIRED,
        "status": REQUIRED,
        "started_at": REQUIRED,
    }
    bad = {
        "name": "x",
        "status": "success",
        "started_at": at(0),
        "ended_at": "later",
        "parent_span_id": 7,
    }
    assert fields_of(api.http.post(path, json=bad)) == {
        "status": "Must be one of: ok, error",
        "ended_at": ISO_OPTIONAL,
        "parent_span_id": "Must be a string if provided",
    }


@pytest.mark.parametrize(
    "value", ["plain text", '{"as": "json text"}', {"a": [1, 2]}, [1, "x"], 0, False, "", None]
)
def test_span_input_and_output_come_back_as_given(api: Api, agent: str, value: Any) -> None:
    trace_id = api.new_trace(agent)
    api.new_span(trace_id, input=value, output=value)
    (span,) = api.detail(trace_id)["spans"]
    assert (span["input"], span["output"]) == (value, value)


@pytest.mark.parametrize(
    ("error", "stored"),
    [("boom", "boom"), (42, "42"), (True, "true"), (None, "null"), ({"a": 1}, "[object Object]")],
)
def test_span_error_is_stored_as_javascript_string(
    api: Api, agent: str, error: Any, stored: str
) -> None:
    trace_id = api.new_trace(agent)
    api.new_span(trace_id, status="error", error=error)
    assert api.detail(trace_id)["spans"][0]["error"] == stored


def test_trace_detail_lists_spans_by_start_with_unchecked_parents(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent, status="success", ended_at=at(100))
    late = api.new_span(trace_id, name="late", started_at=at(50), ended_at=at(60))
    early = api.new_span(trace_id, name="early", started_at=at(10), ended_at=None)
    child = api.new_span(trace_id, name="child", started_at=at(55), parent_span_id=late)
    api.new_span(trace_id, name="orphan", started_at=at(70), parent_span_id="no-such-span")

    detail = api.detail(trace_id)
    assert set(detail) == TRACE_KEYS | {"spans"}
    assert detail["span_count"] == 4 and detail["duration_ms"] == 100
    assert all(set(span) == SPAN_KEYS for span in detail["spans"])
    assert [(s["name"], s["id"], s["parent_span_id"]) for s in detail["spans"]] == [
        ("early", early, None),
        ("late", late, None),
        ("child", child, late),
        ("orphan", detail["spans"][3]["id"], "no-such-span"),
    ]
    assert detail["spans"][0]["ended_at"] is None


# -- GET /api/v1/traces -----------------------------------------------------------------


def list_page(api: Api, **params: Any) -> tuple[list[dict[str, Any]], int]:
    response = api.http.get("/api/v1/traces", params=params)
    assert response.status_code == 200, response.text
    return response.json(), int(response.headers["X-Total-Count"])


def test_list_rows_are_flat_newest_first_with_counts(api: Api, agent: str) -> None:
    older = api.new_trace(agent, started_ms=0, status="success", ended_at=at(250))
    newer = api.new_trace(agent, started_ms=1000)
    api.new_span(older)
    api.new_span(older)
    rows, total = list_page(api, agent_id=agent)
    assert total == 2 and [row["id"] for row in rows] == [newer, older]
    assert all(set(row) == TRACE_KEYS for row in rows)
    assert (rows[1]["span_count"], rows[1]["duration_ms"]) == (2, 250)
    assert (rows[0]["span_count"], rows[0]["duration_ms"], rows[0]["ended_at"]) == (0, None, None)


def test_list_default_limit_is_50_and_total_counts_all(api: Api, agent: str) -> None:
    for i in range(51):
        api.new_trace(agent, started_ms=i)
    rows, total = list_page(api, agent_id=agent)
    assert (len(rows), total) == (50, 51)
    assert rows[0]["started_at"] == at(50)


def test_cursor_pages_through_everything_once(api: Api, agent: str) -> None:
    ids = [api.new_trace(agent, started_ms=i // 2) for i in range(7)]  # pairs share a start
    seen: list[str] = []
    totals: list[int] = []
    params: dict[str, Any] = {"agent_id": agent, "limit": 3}
    while True:
        rows, total = list_page(api, **params)
        totals.append(total)
        seen += [row["id"] for row in rows]
        if len(rows) < 3:
            break
        params["after"] = rows[-1]["id"]
    assert sorted(seen) == sorted(ids) and len(seen) == 7
    assert totals == [7, 4, 1]


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"limit": "0"}, {"limit": "Must be an integer between 1 and 200"}),
        ({"limit": "201"}, {"limit": "Must be an integer between 1 and 200"}),
        ({"limit": "many"}, {"limit": "Must be an integer between 1 and 200"}),
        ({"status": "running"}, {"status": "Must be one of: ok, error"}),
        ({"status": "success"}, {"status": "Must be one of: ok, error"}),
        ({"since": "2026-05-01"}, {"since": ISO_REQUIRED}),
        ({"until": "tomorrow"}, {"until": ISO_REQUIRED}),
    ],
)
def test_list_query_errors(api: Api, params: dict[str, str], expected: dict[str, str]) -> None:
    response = api.http.get("/api/v1/traces", params=params)
    assert response.status_code == 400
    assert response.json() == {"error": "Invalid query parameters", "fields": expected}


def test_list_limit_is_read_like_parse_int(api: Api, agent: str) -> None:
    for i in range(3):
        api.new_trace(agent, started_ms=i)
    rows, total = list_page(api, agent_id=agent, limit="2abc")
    assert (len(rows), total) == (2, 3)


def test_list_unknown_cursor_is_400(api: Api) -> None:
    response = api.http.get("/api/v1/traces", params={"after": "no-such-trace"})
    assert (response.status_code, response.json()) == (
        400,
        {"error": "Invalid cursor: trace not found"},
    )


def test_list_filters_by_time_window_inclusively(api: Api, agent: str) -> None:
    ids = [api.new_trace(agent, started_ms=ms) for ms in (0, 1000, 2000, 3000)]
    rows, total = list_page(api, agent_id=agent, since=at(1000), until=at(2000))
    assert ([row["id"] for row in rows], total) == ([ids[2], ids[1]], 2)


def test_list_status_groups(api: Api, agent: str) -> None:
    by_status = {
        status: api.new_trace(agent, status=status)
        for status in ("running", "success", "error", "timeout")
    }
    ok_rows, _ = list_page(api, agent_id=agent, status="ok")
    error_rows, _ = list_page(api, agent_id=agent, status="error")
    assert [row["id"] for row in ok_rows] == [by_status["success"]]
    assert {row["id"] for row in error_rows} == {by_status["error"], by_status["timeout"]}
