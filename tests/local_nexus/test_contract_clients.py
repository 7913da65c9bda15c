"""One contract suite, run with the project's client and with the official SDK.

Each test writes through a client and reads back over raw HTTP (and, for what the API
does not return, such as trace names, from the server's store).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from nexus_bedrock_tasks.local.nexus.store import TraceFilter
from nexus_bedrock_tasks.local.nexus.testing import LocalNexus, run_local_nexus
from tests.local_nexus.adapters import ContractClient, ProjectClient, Rejected, SdkClient
from tests.local_nexus.conftest import Api

ClientFactory = Callable[..., ContractClient]


@pytest.fixture(params=[ProjectClient, SdkClient], ids=["project-client", "official-sdk"])
def make_client(request: pytest.FixtureRequest) -> Iterator[ClientFactory]:
    """Builds clients of the parametrized kind; closes them after the test."""
    made: list[ContractClient] = []

    def make(nexus: LocalNexus, agent: str, api_key: str | None = None) -> ContractClient:
        client: ContractClient = request.param(nexus, agent, api_key)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def decoded(value: Any) -> Any:
    """A payload as sent, whether the client posted it as JSON or as JSON text."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def test_trace_with_spans_round_trips(
    make_client: ClientFactory, shared_nexus: LocalNexus, api: Api, agent: str
) -> None:
    client = make_client(shared_nexus, agent)
    trace_id = client.start_trace("invoke: what is 2+2?", {"session_id": "s-1", "turn": 2})
    client.add_span(trace_id, "llm:orchestration", input="what is 2+2?", output={"text": "4"})
    client.add_span(trace_id, "action:calc.add", input={"a": 2, "b": 2}, output=[4, "four"])
    client.add_span(trace_id, "failure", error="tool exploded")
    client.end_trace(trace_id, "success")

    detail = api.detail(trace_id)
    assert detail["id"] == trace_id
    assert detail["agent_name"] == agent
    assert detail["status"] == "success"
    assert detail["ended_at"] is not None and detail["duration_ms"] >= 0
    assert detail["span_count"] == 3
    assert {"session_id": "s-1", "turn": 2}.items() <= detail["metadata"].items()
    spans = {span["name"]: span for span in detail["spans"]}
    assert list(spans) == ["llm:orchestration", "action:calc.add", "failure"]
    assert decoded(spans["llm:orchestration"]["input"]) == "what is 2+2?"
    assert decoded(spans["llm:orchestration"]["output"]) == {"text": "4"}
    assert decoded(spans["action:calc.add"]["input"]) == {"a": 2, "b": 2}
    assert decoded(spans["action:calc.add"]["output"]) == [4, "four"]
    assert spans["failure"]["status"] == "error"
    assert spans["failure"]["error"] == "tool exploded"
    assert spans["failure"]["input"] is None and spans["failure"]["output"] is None
    assert all(span["status"] == "ok" for name, span in spans.items() if name != "failure")
    stored = shared_nexus.store.get_trace(trace_id)
    assert stored is not None and stored[0].name == "invoke: what is 2+2?"


def test_listing_finds_the_trace_by_agent_and_outcome(
    make_client: ClientFactory, shared_nexus: LocalNexus, api: Api, agent: str
) -> None:
    client = make_client(shared_nexus, agent)
    # Newest first is by `started_at`, in milliseconds: traces started in the same
    # millisecond (a fast client makes them) would have no defined order.
    ok_id = client.start_trace("invoke: fine")
    client.end_trace(ok_id, "success")
    time.sleep(0.002)
    timeout_id = client.start_trace("invoke: slow")
    client.end_trace(timeout_id, "timeout")
    time.sleep(0.002)
    running_id = client.start_trace("invoke: still going")

    def listed(**params: str) -> tuple[list[str], str]:
        response = api.http.get("/api/v1/traces", params={"agent_id": agent, **params})
        assert response.status_code == 200
        return [row["id"] for row in response.json()], response.headers["X-Total-Count"]

    assert listed() == ([running_id, timeout_id, ok_id], "3")
    assert listed(status="ok") == ([ok_id], "1")
    assert listed(status="error") == ([timeout_id], "1")


def test_wrong_key_is_rejected_and_nothing_is_stored(
    make_client: ClientFactory, shared_nexus: LocalNexus, api: Api, agent: str
) -> None:
    client = make_client(shared_nexus, agent, api_key="nxs_not_the_key")
    with pytest.raises(Rejected):
        client.start_trace("invoke: never stored")
    response = api.http.get("/api/v1/traces", params={"agent_id": agent})
    assert response.json() == [] and response.headers["X-Total-Count"] == "0"


def test_free_plan_refuses_a_second_agent(make_client: ClientFactory) -> None:
    with run_local_nexus(max_agents=1) as nexus:
        first = make_client(nexus, "bedrock-agent")
        trace_id = first.start_trace("invoke: first agent")
        first.add_span(trace_id, "summary", output={"finish_reason": "end_turn"})
        with pytest.raises(Rejected):
            make_client(nexus, "another-agent").start_trace("invoke: second agent")
        assert nexus.store.agent_names() == ["bedrock-agent"]


def test_monthly_trace_limit_refuses_further_traces(make_client: ClientFactory) -> None:
    with run_local_nexus(monthly_trace_limit=2) as nexus:
        client = make_client(nexus, "bedrock-agent")
        client.start_trace("invoke: one")
        client.start_trace("invoke: two")
        with pytest.raises(Rejected):
            client.start_trace("invoke: three")
        assert nexus.store.list_traces(TraceFilter())[1] == 2
