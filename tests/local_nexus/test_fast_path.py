"""The write routes' fast paths answer exactly as the FastAPI app does.

Two ways in must agree byte for byte: FastAPI itself (`NexusApp.framework`) and the ASGI
front `FastWrites` (`NexusApp.entry`). Other requests must still reach FastAPI, and fault
injection must still reach the write routes.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.types import Message, Receive, Scope, Send

from nexus_bedrock_tasks.local.nexus.api import KeyCheck
from nexus_bedrock_tasks.local.nexus.app import NexusApp, create_app
from nexus_bedrock_tasks.local.nexus.config import DEV_KEY, PlanLimits
from nexus_bedrock_tasks.local.nexus.fast_path import FastWrites
from nexus_bedrock_tasks.local.nexus.store import NexusStore, SpanRow, new_id
from nexus_bedrock_tasks.local.nexus.web import HEALTH_PATH
from tests.local_nexus.conftest import Api, at, trace_body

AUTH = (b"authorization", f"Bearer {DEV_KEY}".encode())
UUID_TEXT = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
MISSING = "00000000-0000-4000-8000-000000000000"
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


def span_body(**fields: Any) -> dict[str, Any]:
    return {"name": "task:x", "status": "ok", "started_at": at(0), "ended_at": at(5), **fields}


def encoded(body: object) -> bytes:
    return body if isinstance(body, bytes) else json.dumps(body).encode()


async def call_asgi(
    app: Any, method: str, path: str, body: bytes = b"", headers: tuple[Any, ...] = (AUTH,)
) -> Answer:
    """One request through an ASGI callable; the body arrives in two messages."""
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"testserver"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    half = len(body) // 2
    inbox: list[Message] = [
        {"type": "http.request", "body": body[:half], "more_body": True},
        {"type": "http.request", "body": body[half:], "more_body": False},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return inbox.pop(0) if inbox else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, rest = sent[0], sent[1:]
    return start["status"], list(start["headers"]), b"".join(m.get("body", b"") for m in rest)


def normalized(answer: Answer) -> Answer:
    """The answer with fresh ids replaced (two calls never create the same id)."""
    status, headers, body = answer
    return status, headers, UUID_TEXT.sub(b"<id>", body)


@contextmanager
def opened(app: NexusApp) -> Iterator[NexusStore]:
    store: NexusStore = app.state.store
    store.open()
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def app() -> Iterator[NexusApp]:
    nexus_app = create_app(None, DEV_KEY)
    with opened(nexus_app):
        yield nexus_app


def both(app: NexusApp, method: str, path: str, body: object = b"", **kw: Any) -> Answer:
    """The fast path's answer, after checking that FastAPI gives the same one."""
    raw = encoded(body)
    fast = asyncio.run(call_asgi(app, method, path, raw, **kw))
    framework = asyncio.run(call_asgi(app.framework, method, path, raw, **kw))
    assert normalized(fast) == normalized(framework)
    return fast


def new_trace(app: NexusApp, agent: str = "agent") -> str:
    status, _, body = both(app, "POST", "/api/v1/traces", trace_body(agent))
    assert status == 201
    return str(json.loads(body)["trace_id"])


# -- the ASGI front answers as FastAPI does ------------------------------------------

BAD_TRACES: list[object] = [
    trace_body("a", status="done", started_at="yesterday"),
    {"name": ""},
    [1, 2],
    b"not json",
    b"3",
    b"",
    b'{"agent_id": NaN}',
    trace_body("a", ended_at=5),
]


@pytest.mark.parametrize("body", BAD_TRACES)
def test_post_trace_errors_match(app: NexusApp, body: object) -> None:
    status, headers, _ = both(app, "POST", "/api/v1/traces", body)
    assert status == 400
    assert headers[1] == (b"content-type", b"application/json")


def test_successes_match_and_are_stored(app: NexusApp) -> None:
    trace_id = new_trace(app)
    meta = trace_body("agent", metadata={"k": "ü"})
    assert both(app, "POST", "/api/v1/traces", meta)[0] == 201
    spans = f"/api/v1/traces/{trace_id}/spans"
    status, headers, body = both(app, "POST", spans, span_body(input={"q": "é"}, error=None))
    assert status == 201 and UUID_TEXT.fullmatch(json.loads(body)["span_id"].encode())
    assert headers == [(b"content-length", str(len(body)).encode()), headers[1]]
    patched = both(app, "PATCH", f"/api/v1/traces/{trace_id}", {"status": "success"})
    assert patched[0] == 200 and json.loads(patched[2]) == {"trace_id": trace_id}
    found = app.state.store.get_trace(trace_id)
    assert found is not None
    row, stored = found
    assert row.status == "success" and len(stored) == 2
    assert {span.input for span in stored} == {'{"q":"é"}'} and stored[0].error == "null"


@pytest.mark.parametrize(
    "body", [span_body(status="fine"), span_body(parent_span_id=3), b"{", b"[]", span_body()]
)
def test_span_errors_match(app: NexusApp, body: object) -> None:
    trace_id = new_trace(app)
    status = both(app, "POST", f"/api/v1/traces/{trace_id}/spans", body)[0]
    assert status == (201 if body == span_body() else 400)
    # An unknown trace is a 404 before anything is said about the body.
    missing = both(app, "POST", f"/api/v1/traces/{MISSING}/spans", body)
    assert missing[:1] + missing[2:] == (404, b'{"error":"Trace not found"}')


@pytest.mark.parametrize(
    "body",
    [
        {"status": "done"},
        {"metadata": {"a": 1}},
        {"ended_at": "soon"},
        {"status": None},
        b"x",
        {"ended_at": at(9)},
    ],
)
def test_patch_answers_match(app: NexusApp, body: object) -> None:
    trace_id = new_trace(app)
    both(app, "PATCH", f"/api/v1/traces/{trace_id}", body)
    assert both(app, "PATCH", f"/api/v1/traces/{MISSING}", body)[0] == 404


@pytest.mark.parametrize(
    "headers",
    [
        (),
        ((b"authorization", b"Bearer nxs_wrong"),),
        ((b"authorization", f"Basic {DEV_KEY}".encode()),),
        ((b"authorization", f"Bearer  {DEV_KEY} ".encode()),),
        ((b"authorization", b"Bearer \xe9"),),
        ((b"authorization", b"Bearer nxs_wrong"), AUTH),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/traces"),
        ("PATCH", f"/api/v1/traces/{MISSING}"),
        ("POST", "/api/v1/traces/x/spans"),
    ],
)
def test_keys_are_checked_alike(
    app: NexusApp, method: str, path: str, headers: tuple[Any, ...]
) -> None:
    both(app, method, path, trace_body("a"), headers=headers)


def test_plan_limits_match() -> None:
    one_agent = create_app(None, DEV_KEY, max_agents=1)
    with opened(one_agent):
        new_trace(one_agent, "first")
        status, _, body = both(one_agent, "POST", "/api/v1/traces", trace_body("second"))
        assert (status, json.loads(body)["error"]) == (403, "Free plan limited to 1 agent")
    two_traces = create_app(None, DEV_KEY, monthly_trace_limit=2)
    with opened(two_traces):
        new_trace(two_traces)  # one trace from each path
        status, _, body = both(two_traces, "POST", "/api/v1/traces", trace_body("agent"))
        assert (status, json.loads(body)["current"]) == (429, 2)


class Spy:
    """An ASGI app in front of another that records the paths it was given."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.paths.append(f"{scope['method']} {scope['path']}")
        await self.app(scope, receive, send)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/api/v1/traces", 200),
        ("GET", f"/api/v1/traces/{MISSING}", 404),
        ("DELETE", "/api/v1/traces", 405),
        ("PUT", f"/api/v1/traces/{MISSING}", 405),
        ("GET", f"/api/v1/traces/{MISSING}/spans", 405),
        ("POST", "/api/v1/traces/", 307),
        ("POST", "/api/v1/traces/a/b", 404),
        ("POST", "/api/v1/tracesx", 404),
        ("POST", "/v1/traces", 200),
        ("GET", HEALTH_PATH, 200),
        ("GET", "/", 200),
    ],
)
def test_other_requests_reach_fastapi(app: NexusApp, method: str, path: str, status: int) -> None:
    assert isinstance(app.entry, FastWrites)
    spy = app.entry.app = Spy(app.entry.app)
    answer = both(app, method, path, {"resourceSpans": []})
    assert answer[0] == status
    assert spy.paths == [f"{method} {path}"]
    if (method, path) == ("GET", "/api/v1/traces"):
        assert (b"x-total-count", b"0") in answer[1]


def test_write_routes_do_not_reach_fastapi(app: NexusApp) -> None:
    assert isinstance(app.entry, FastWrites)
    spy = app.entry.app = Spy(app.entry.app)
    trace_id = new_trace(app)
    asyncio.run(call_asgi(app, "POST", f"/api/v1/traces/{trace_id}/spans", encoded(span_body())))
    asyncio.run(call_asgi(app, "PATCH", f"/api/v1/traces/{trace_id}", b'{"status":"error"}'))
    asyncio.run(call_asgi(app, "POST", "/api/v1/traces", b"{}", headers=()))
    assert spy.paths == []


# -- on a real socket ---------------------------------------------------------------


def read_answer(reader: Any) -> bytes:
    lines = []
    length = 0
    while (line := reader.readline()) not in (b"\r\n", b""):
        lines.append(line)
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return b"".join(lines) + b"\r\n" + reader.read(length)


def raw_request(method: str, path: str, body: object, auth: str = DEV_KEY, *extra: str) -> bytes:
    data = encoded(body)
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Authorization: Bearer {auth}"]
    head += [*extra, "Content-Type: application/json", f"Content-Length: {len(data)}"]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + data


def test_pipelined_and_mixed_requests_keep_their_order(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent)
    spans = f"/api/v1/traces/{trace_id}/spans"
    host, port = api.nexus.url.removeprefix("http://").split(":")
    batch = [
        raw_request("POST", spans, span_body(name="one")),
        raw_request("GET", f"/api/v1/traces/{trace_id}", b""),
        raw_request("POST", spans, span_body(name="two")),
        raw_request("PATCH", f"/api/v1/traces/{trace_id}", {"status": "success"}),
    ]
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"".join(batch))
        reader = sock.makefile("rb")
        answers = [read_answer(reader) for _ in batch]
    statuses = [answer.split(b" ")[1] for answer in answers]
    assert statuses == [b"201", b"200", b"201", b"200"]
    assert [span["name"] for span in json.loads(answers[1].partition(b"\r\n\r\n")[2])["spans"]] == [
        "one"
    ]
    assert [span["name"] for span in api.detail(trace_id)["spans"]] == ["one", "two"]


def test_http_1_0_and_expect_continue_take_the_asgi_path(api: Api, agent: str) -> None:
    trace_id = api.new_trace(agent)
    host, port = api.nexus.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        request = raw_request("POST", f"/api/v1/traces/{trace_id}/spans", span_body())
        sock.sendall(request.replace(b"HTTP/1.1", b"HTTP/1.0", 1))
        answer = read_answer(sock.makefile("rb"))
    assert answer.startswith(b"HTTP/1.1 201 Created\r\n") and b"connection: close" in answer
    with httpx.Client(base_url=api.nexus.url, headers=api.http.headers) as http:
        response = http.post(
            f"/api/v1/traces/{trace_id}/spans",
            json=span_body(),
            headers={"Expect": "100-continue"},
        )
    assert response.status_code == 201
    assert len(api.detail(trace_id)["spans"]) == 2


# -- faults still reach the write routes ------------------------------------------------


def test_faults_apply_to_span_posts_and_patches(faulty: Api, agent: str) -> None:
    trace_id = faulty.new_trace(agent)
    spans, trace = f"/api/v1/traces/{trace_id}/spans", f"/api/v1/traces/{trace_id}"
    faulty.nexus.faults.fail_next(2, status=502, retry_after=3)
    failed = [faulty.http.post(spans, json=span_body()), faulty.http.patch(trace, json={})]
    assert [(r.status_code, r.headers.get("Retry-After")) for r in failed] == [(502, "3")] * 2
    faulty.nexus.faults.unauthorized = True
    answer = faulty.http.post(spans, json=span_body())
    assert (answer.status_code, answer.json()) == (401, {"error": "Invalid API key"})
    faulty.nexus.faults.unauthorized = False
    faulty.nexus.faults.max_payload_chars = 10
    too_long = faulty.http.post(spans, json=span_body(output="x" * 11))
    assert too_long.json()["fields"] == {"output": "Too long: 11 characters, at most 10"}
    faulty.nexus.faults.max_payload_chars = None
    faulty.nexus.faults.drop_next_responses(1)
    with pytest.raises(httpx.RemoteProtocolError):
        faulty.http.post(spans, json=span_body(name="stored, unanswered"))
    assert faulty.http.patch(trace, json={"status": "success"}).status_code == 200
    detail = faulty.detail(trace_id)
    assert [span["name"] for span in detail["spans"]] == ["stored, unanswered"]
    assert detail["status"] == "success"


# -- store, ids and key check ----------------------------------------------------------


def test_writes_are_committed_soon_and_on_close(tmp_path: Path) -> None:
    path = tmp_path / "nexus.db"
    store = NexusStore(path, PlanLimits(), commit_delay_s=0.05)
    store.open()
    trace_id = store.create_trace("a", "n", "running", at(0), None, None)
    span = SpanRow(new_id(), "s", None, "ok", at(0), None, None, None, None)
    assert store.create_span(trace_id, span) and store.trace_exists(trace_id)
    assert not store.create_span(MISSING, span)
    assert not store.update_trace(MISSING, "success", None)
    deadline = time.monotonic() + 10
    with sqlite3.connect(path) as other:
        while other.execute("SELECT COUNT(*) FROM spans").fetchone() != (1,):
            assert time.monotonic() < deadline, "the write was never committed"
            time.sleep(0.01)
    store.close()  # long delay: only the close commits
    store = NexusStore(path, PlanLimits(), commit_delay_s=3600)
    store.open()
    assert store.update_trace(trace_id, "success", None)
    store.close()
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT status FROM traces").fetchall() == [("success",)]


def test_a_refused_write_keeps_what_was_written_before(tmp_path: Path) -> None:
    store = NexusStore(tmp_path / "nexus.db", PlanLimits(max_agents=1), commit_delay_s=3600)
    store.open()
    try:
        first = store.create_trace("a", "n", "running", at(0), None, None)
        with pytest.raises(Exception, match="agent"):
            store.create_trace("b", "n", "running", at(0), None, None)
        assert store.trace_exists(first)
    finally:
        store.close()


def test_ids_are_version_4_uuids() -> None:
    ids = {new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)


def test_key_check_remembers_only_an_accepted_header() -> None:
    keys = KeyCheck(DEV_KEY)
    padded = f"Bearer  {DEV_KEY}\t".encode()
    assert keys.accepts_authorization(padded) and keys.accepts_authorization(padded)
    assert keys.accepts_authorization(f"Bearer {DEV_KEY}".encode())
    for refused in (None, b"", b"Bearer ", b"Bearer nxs_other", DEV_KEY.encode()):
        assert not keys.accepts_authorization(refused)
    assert keys.accepts_authorization(f"Bearer {DEV_KEY}".encode())
