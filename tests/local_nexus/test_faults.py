"""Fault injection: off by default, in-process knobs, the HTTP switchboard, client recovery."""

from __future__ import annotations

import time

import httpx
import pytest

from nexus_bedrock_tasks.exceptions import NexusAuthError
from nexus_bedrock_tasks.local.nexus.store import TraceFilter
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.nexus.records import TraceRecord, utcnow
from tests.local_nexus.conftest import Api, trace_body


def stored_traces(nexus: LocalNexus, agent: str) -> int:
    return nexus.store.list_traces(TraceFilter(agent_name=agent))[1]


def test_faults_are_off_and_unreachable_by_default(api: Api) -> None:
    with pytest.raises(RuntimeError, match="faults=True"):
        _ = api.nexus.faults
    assert api.http.get("/_faults").status_code == 404
    assert api.http.put("/_faults", json={"unauthorized": True}).status_code == 404


def test_fail_next_answers_503_without_storing(faulty: Api, agent: str) -> None:
    faulty.nexus.faults.fail_next(2, retry_after=1.5)
    body = trace_body(agent)
    for _ in range(2):
        response = faulty.http.post("/api/v1/traces", json=body)
        assert response.status_code == 503 and response.headers["Retry-After"] == "1.5"
    assert stored_traces(faulty.nexus, agent) == 0
    assert faulty.http.post("/api/v1/traces", json=body).status_code == 201


def test_unauthorized_answers_401_but_leaves_the_page_and_health(faulty: Api) -> None:
    faulty.nexus.faults.unauthorized = True
    response = faulty.http.get("/api/v1/traces")
    assert (response.status_code, response.json()) == (401, {"error": "Invalid API key"})
    assert faulty.http.get("/health").status_code == 200
    assert faulty.http.get("/").status_code == 200


def test_delay_holds_every_answer(faulty: Api, agent: str) -> None:
    faulty.nexus.faults.delay_s = 0.3
    started = time.monotonic()
    faulty.new_trace(agent)
    assert time.monotonic() - started >= 0.3


def test_dropped_response_is_stored_but_never_answered(faulty: Api, agent: str) -> None:
    faulty.nexus.faults.drop_next_responses(1)
    with pytest.raises(httpx.RemoteProtocolError):
        faulty.new_trace(agent)
    assert stored_traces(faulty.nexus, agent) == 1
    faulty.new_trace(agent)
    assert stored_traces(faulty.nexus, agent) == 2


def test_http_switchboard_sets_shows_and_clears(faulty: Api) -> None:
    settings = {"fail_next": 1, "fail_status": 502, "delay_s": 0, "unauthorized": False}
    shown = faulty.http.put("/_faults", json=settings).json()
    assert shown == {
        **settings, "retry_after": None, "delay_s": 0.0, "drop_next_responses": 0,
        "flap_every": 0, "max_payload_chars": None,
    }  # fmt: skip
    assert faulty.http.get("/api/v1/traces").status_code == 502
    assert faulty.http.get("/_faults").json()["fail_next"] == 0
    faulty.http.put("/_faults", json={"unauthorized": True})
    assert faulty.http.get("/api/v1/traces").status_code == 401
    assert faulty.http.delete("/_faults").json()["unauthorized"] is False
    assert faulty.http.get("/api/v1/traces").status_code == 200


def test_http_switchboard_checks_key_and_body(faulty: Api) -> None:
    with httpx.Client(base_url=faulty.nexus.url, trust_env=False) as anonymous:
        assert anonymous.put("/_faults", json={"unauthorized": True}).status_code == 401
    response = faulty.http.put("/_faults", json={"fail_next": "3", "explode": True})
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"fail_next", "explode"}
    assert faulty.nexus.faults.snapshot().fail_next == 0


def test_project_client_rides_out_503s_and_a_lost_answer(faulty_nexus: LocalNexus) -> None:
    faulty_nexus.faults.clear()
    agent = "client-under-faults"
    with NexusClient(
        base_url=faulty_nexus.url, api_key=faulty_nexus.api_key, sleep=lambda _s: None
    ) as client:
        faulty_nexus.faults.fail_next(2)
        first = client.create_trace(TraceRecord("invoke: after 503s", agent, utcnow()))
        faulty_nexus.faults.drop_next_responses(1)
        second = client.create_trace(TraceRecord("invoke: answer lost", agent, utcnow()))
        faulty_nexus.faults.unauthorized = True
        with pytest.raises(NexusAuthError):
            client.get_trace(first)
    faulty_nexus.faults.clear()
    rows, total = faulty_nexus.store.list_traces(TraceFilter(agent_name=agent))
    assert total == 2 and {row.id for row in rows} == {first, second}
