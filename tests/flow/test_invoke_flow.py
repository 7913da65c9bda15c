"""The invocation flow end to end: stock boto3 → emulator, tracer → local Nexus.

Each trace is read back from the local Nexus and checked span by span against SPANS.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flows.invoke_agent import invoke_agent_flow
from nexus_bedrock_tasks import tool
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.local.bedrock.testing import set_session_faults
from nexus_bedrock_tasks.results import InvocationFailed, InvocationResult
from nexus_bedrock_tasks.semconv import SUMMARY_FIELDS
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS, Traced, restored_tool_registry

pytestmark = [pytest.mark.slow, *PREFECT_SOCKET_WARNINGS]
DEMO = {"agent_id": "DEMO000001", "agent_alias_id": "TSTALIASID"}
TRIP_TOOLS = Path(__file__).with_name("trip_tools.py")


def invoke(stack: Traced, **kwargs: Any) -> InvocationResult:
    result: InvocationResult = stack.loop.run(invoke_agent_flow(**kwargs))
    return result


def failed_invoke(stack: Traced, **kwargs: Any) -> InvocationResult:
    with pytest.raises(InvocationFailed) as caught:
        stack.loop.run(invoke_agent_flow(**kwargs))
    return caught.value.result


def output(span: dict[str, Any]) -> Any:
    value = span["output"]
    return json.loads(value) if isinstance(value, str) else value


def check_contract(
    trace: dict[str, Any], result: InvocationResult
) -> dict[str, list[dict[str, Any]]]:
    """What every trace must satisfy; returns spans by name."""
    spans = trace["spans"]
    by_id = {span["id"]: span for span in spans}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for span in spans:
        by_name.setdefault(span["name"], []).append(span)
        if span["parent_span_id"] is not None:
            assert span["parent_span_id"] in by_id, f"{span['name']} has a dangling parent"
    assert len(by_name["summary"]) == 1
    summary = by_name["summary"][0]
    assert summary["parent_span_id"] is None
    assert spans[-1]["name"] == "summary"  # ordered by started_at: the last one
    figures = output(summary)
    assert list(figures) == list(SUMMARY_FIELDS)
    assert figures["finish_reason"] == result.finish_reason
    assert figures["input_tokens"] == result.usage.input_tokens
    assert figures["total_tokens"] == result.usage.total_tokens
    assert {k: figures[k] for k in result.counts} == result.counts
    llm_tokens = sum(output(s)["input_tokens"] for s in spans if s["name"].startswith("llm:"))
    assert llm_tokens == figures["input_tokens"]
    assert figures["llm_calls"] == sum(s["name"].startswith("llm:") for s in spans)
    for span in spans:
        if span["name"].startswith("task:"):
            assert span["parent_span_id"] is None
        if span["name"].startswith(("llm:", "kb:", "action:", "guardrail", "collaborator:")):
            parent = by_id[span["parent_span_id"]]["name"]
            assert parent == "task:drain_stream" or parent.startswith("collaborator:")
    assert trace["ended_at"] is not None
    metadata = trace["metadata"]
    assert metadata["session_id"] == result.session_id
    assert metadata["flow_run_id"] == result.flow_run_id
    assert metadata["agent_id"] and metadata["agent_alias_id"] and metadata["turn"] == 1
    return by_name


def test_knowledge_base_answer(stack: Traced) -> None:
    prompt = "What should I pack for a city trip?"
    result = invoke(stack, **DEMO, prompt=prompt)
    assert result.text.startswith("When you pack for a city trip")
    assert result.finish_reason == "end_turn"
    assert result.counts["kb_lookups"] == 1 and result.counts["citations"] == 1
    trace = stack.trace(result.local_trace_id)
    assert trace["status"] == "success"
    assert trace["metadata"]["prompt"] == prompt
    by_name = check_contract(trace, result)
    kb = by_name["kb:lookup"][0]
    assert json.loads(kb["input"])["query"]
    assert output(kb)["num_references"] >= 1
    assert output(kb)["references"][0]["uri"].startswith("s3://nexus-demo-travel-kb/guides/")
    tasks = Counter(name for name in by_name if name.startswith("task:"))
    assert set(tasks) == {"task:invoke_agent", "task:drain_stream", "task:finalize_trace"}


def test_weather_return_control_round_trip(stack: Traced, tools: None) -> None:
    result = invoke(stack, **DEMO, prompt="What's the weather in Paris tomorrow?")
    assert (
        result.text
        == "Here is the weather forecast for Paris: Forecast for Paris: light rain, 14°C"
    )
    assert result.counts["return_control_rounds"] == 1 and result.counts["tool_calls"] == 1
    assert result.counts["action_calls"] == 0
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    rc = by_name["return_control"][0]
    assert by_name["task:drain_stream"][0]["id"] == rc["parent_span_id"]
    assert output(rc)["calls"][0]["parameters"] == {"city": "Paris"}
    tool_span = by_name["tool:weather.get_forecast"][0]
    assert tool_span["parent_span_id"] == rc["id"] and tool_span["status"] == "ok"
    assert output(tool_span)["result"] == "Forecast for Paris: light rain, 14°C"
    assert len(by_name["task:invoke_agent"]) == 2 and len(by_name["task:drain_stream"]) == 2


def test_unknown_tool_answers_reprompt_and_never_leaves_session_waiting(stack: Traced) -> None:
    result = invoke(stack, **DEMO, prompt="What's the weather in Oslo?")
    assert result.finish_reason == "end_turn"
    assert result.tools[0]["response_state"] == "REPROMPT"
    assert "no local tool registered for weather.get_forecast" in result.tools[0]["error"]
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    assert by_name["tool:weather.get_forecast"][0]["status"] == "error"


def test_raising_tool_answers_failure(stack: Traced) -> None:
    with restored_tool_registry():

        @tool(action_group="weather", function="get_forecast")
        def broken(city: str) -> str:
            raise RuntimeError(f"weather service down for {city}")

        result = invoke(stack, **DEMO, prompt="What's the weather in Tokyo?")
    assert result.tools[0]["response_state"] == "FAILURE"
    assert result.tools[0]["error"] == "RuntimeError: weather service down for Tokyo"
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    span = by_name["tool:weather.get_forecast"][0]
    assert span["status"] == "error" and "weather service down" in span["error"]


def test_lambda_action_guardrail_and_phases(stack: Traced) -> None:
    result = invoke(
        stack, agent_id="PLANNER001", agent_alias_id="TSTALIASID", prompt="Convert 100 USD to EUR"
    )
    assert result.counts["action_calls"] == 1
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    assert {"llm:preprocessing", "llm:orchestration", "llm:postprocessing"} <= set(by_name)
    action = by_name["action:currency.convert_currency"][0]
    assert action["status"] == "ok" and output(action)["result"]

    blocked = invoke(
        stack, agent_id="PLANNER001", agent_alias_id="TSTALIASID", prompt="Who wins the election?"
    )
    assert blocked.finish_reason == "guardrail"
    assert blocked.counts["guardrail_interventions"] >= 1
    trace = stack.trace(blocked.local_trace_id)
    assert trace["status"] == "success"  # a blocked answer is still an answer
    guard = check_contract(trace, blocked)["guardrail"]
    assert any(span["status"] == "error" for span in guard)


def test_collaborators_nest_their_steps(stack: Traced) -> None:
    result = invoke(
        stack, agent_id="SUPERV0001", agent_alias_id="TSTALIASID", prompt="Convert 50 EUR to JPY"
    )
    assert result.counts["collaborator_calls"] == 1
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    collab = by_name["collaborator:CurrencyExpert"][0]
    nested = [
        s
        for s in stack.trace(result.local_trace_id)["spans"]
        if s["parent_span_id"] == collab["id"]
    ]
    assert {s["name"] for s in nested} >= {"llm:orchestration", "action:currency.convert_currency"}


def test_pre_stream_faults_are_retried_by_one_layer(stack: Traced) -> None:
    session = f"throttle-{uuid.uuid4().hex[:8]}"
    set_session_faults(stack_url(), session, throttle_first=2)
    result = invoke(stack, **DEMO, prompt="What should I pack?", session_id=session)
    assert result.finish_reason == "end_turn" and result.counts["retries"] == 2
    check_contract(stack.trace(result.local_trace_id), result)

    session = f"err5xx-{uuid.uuid4().hex[:8]}"
    set_session_faults(stack_url(), session, error_first=1, error_status=503)
    result = invoke(stack, **DEMO, prompt="What should I pack?", session_id=session)
    assert result.finish_reason == "end_turn" and result.counts["retries"] == 1


@pytest.mark.parametrize(
    ("faults", "code"),
    [
        ({"stream_error_after": 2, "stream_error": "throttlingException"}, "throttlingException"),
        ({"drop_after": 2}, None),
    ],
)
def test_in_stream_failures_reinvoke_then_fail_with_all_tokens_counted(
    stack: Traced, faults: dict[str, Any], code: str | None
) -> None:
    session = f"stream-{uuid.uuid4().hex[:8]}"
    set_session_faults(stack_url(), session, **faults)
    result = failed_invoke(stack, **DEMO, prompt="What should I pack?", session_id=session)
    assert result.finish_reason == "error" and result.counts["retries"] == 2
    if code:
        assert result.error and result.error.startswith(code)
    trace = stack.trace(result.local_trace_id)
    assert trace["status"] == "error"
    by_name = check_contract(trace, result)
    assert len(by_name["task:invoke_agent"]) == 3  # the first try and two re-invocations
    assert len(by_name["task:drain_stream"]) == 3


def test_non_transient_error_fails_the_run_and_the_trace(stack: Traced) -> None:
    result = failed_invoke(
        stack, agent_id="NOSUCHAGNT", agent_alias_id="TSTALIASID", prompt="hello"
    )
    assert result.finish_reason == "error"
    assert result.error and "ResourceNotFoundException" in result.error
    trace = stack.trace(result.local_trace_id)
    assert trace["status"] == "error" and trace["ended_at"]
    check_contract(trace, result)


def stack_url() -> str:
    return os.environ["AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME"]


def _paused_run_id(timeout: float = 60) -> str:
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
    )

    paused = FlowRunFilter(
        state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Paused", "Suspended"]))
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(flow_run_filter=paused)
            if runs:
                return str(runs[0].id)
            time.sleep(0.5)
    raise AssertionError("no flow run paused for confirmation")


@pytest.mark.parametrize("approve", [True, False])
def test_user_confirmation_waits_for_a_person(stack: Traced, approve: bool) -> None:
    from prefect.flow_runs import resume_flow_run

    future = asyncio.run_coroutine_threadsafe(
        invoke_agent_flow(
            agent_id="PLANNER001",
            agent_alias_id="TSTALIASID",
            prompt="Book a hotel in Paris for 2 nights",
        ),
        stack.loop.loop,
    )
    run_id = _paused_run_id()
    resume_flow_run(run_id, run_input={"approve": approve})
    result: InvocationResult = future.result(120)
    assert result.tools[0]["executed"] is False  # the agent's own Lambda runs the booking
    assert result.tools[0]["confirmation_state"] == ("CONFIRM" if approve else "DENY")
    trace = stack.trace(result.local_trace_id)
    by_name = check_contract(trace, result)
    assert output(by_name["return_control"][0])["calls"][0]["confirmation_required"] is True
    if approve:
        assert result.text.startswith("Your hotel is booked")
    else:
        assert "booked:" not in result.text


@pytest.fixture
def trip_tools(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from nexus_bedrock_tasks.tools import load_tools

    log = tmp_path / "tools.log"
    monkeypatch.setenv("TRIP_TOOL_LOG", str(log))
    with restored_tool_registry():
        load_tools(str(TRIP_TOOLS))
        yield log


TRIP = {"agent_id": "TRIP000001", "agent_alias_id": "TSTALIASID"}


def test_parallel_calls_run_concurrently_in_one_round(stack: Traced, trip_tools: Any) -> None:
    prompt = "What's the weather in Lisbon and are there hotels for 3 nights?"
    result = invoke(stack, **TRIP, prompt=prompt)
    assert result.text == (
        "Weather in Lisbon: sunny\n\nHotels in Lisbon for 3 nights: Hotel Roma, Albergo Sole"
    )
    assert result.counts["return_control_rounds"] == 1 and result.counts["tool_calls"] == 2
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    rc = by_name["return_control"][0]
    tools = [by_name["tool:weather.get_forecast"][0], by_name["tool:hotels.find_hotels"][0]]
    assert all(span["parent_span_id"] == rc["id"] for span in tools)
    assert len(output(rc)["calls"]) == 2


def test_chained_rounds_and_api_tools(stack: Traced, trip_tools: Any) -> None:
    result = invoke(stack, **TRIP, prompt="Check the dates for my itinerary in Porto")
    assert result.counts["return_control_rounds"] == 2 and result.counts["tool_calls"] == 2
    assert result.text.endswith("Hotels in Porto for 3 nights: Hotel Roma, Albergo Sole")
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    assert len(by_name["return_control"]) == 2
    assert len(by_name["task:drain_stream"]) == 3

    booked = invoke(
        stack, **TRIP, prompt="Please reserve a room in Porto for 2 nights for 3 guests"
    )
    assert (
        booked.text
        == 'Reservation made in Porto for 2 nights: {"reservationId": "R-1001", "guests": 3}'
    )
    span = check_contract(stack.trace(booked.local_trace_id), booked)["tool:booking./reservations"][
        0
    ]
    assert output(span)["parameters"] == {"city": "Porto"}
    assert trip_tools.read_text().splitlines()[-1] == "reserve Porto 2 3"


def test_a_retried_tool_task_reuses_the_stored_result(stack: Traced, trip_tools: Any) -> None:
    from nexus_bedrock_tasks.bedrock.model import ReturnControlCall, ReturnControlParameter
    from nexus_bedrock_tasks.settings import BedrockTasksSettings
    from nexus_bedrock_tasks.tasks import PlannedCall, execute_tool

    call = ReturnControlCall(
        action_group="calendar", function="check_dates", api_path=None, http_method=None,
        parameters=(ReturnControlParameter("city", "string", "Oslo"),), request_body=None,
    )  # fmt: skip
    planned = PlannedCall(index=0, key=f"s-{uuid.uuid4().hex}:inv:0", call=call, has_tool=True)
    settings = BedrockTasksSettings()
    first = execute_tool.fn(planned, "parent", settings)
    second = execute_tool.fn(planned, "parent", settings)
    one, two = stack.loop.run(first), stack.loop.run(second)
    assert (one.reused, two.reused) == (False, True)
    assert one.body == two.body == "Free from 12 to 15 June, 3 nights"
    assert trip_tools.read_text().splitlines().count("check_dates Oslo") == 1


def test_transient_stream_error_is_reinvoked_and_its_tokens_still_count(stack: Traced) -> None:
    prompt = "What should I pack for a city trip?"
    clean = invoke(stack, **DEMO, prompt=prompt, session_id=f"clean-{uuid.uuid4().hex[:8]}")
    session = f"recover-{uuid.uuid4().hex[:8]}"
    set_session_faults(
        stack_url(), session,
        stream_error_after=3, stream_error="throttlingException", stream_faults_first=1,
    )  # fmt: skip
    result = invoke(stack, **DEMO, prompt=prompt, session_id=session)
    assert result.text == clean.text and result.finish_reason == "end_turn"
    assert result.counts["retries"] == 1
    assert result.usage.input_tokens > clean.usage.input_tokens  # the failed attempt's too
    by_name = check_contract(stack.trace(result.local_trace_id), result)
    assert len(by_name["task:drain_stream"]) == 2


def test_dropped_streams_never_run_a_tool_twice(stack: Traced, trip_tools: Path) -> None:
    session = f"drop-{uuid.uuid4().hex[:8]}"
    set_session_faults(stack_url(), session, drop_after=1, stream_faults_first=2)
    prompt = "What's the weather in Lisbon and are there hotels for 3 nights?"
    result = invoke(stack, **TRIP, prompt=prompt, session_id=session)
    assert result.counts["retries"] == 2 and result.counts["tool_calls"] == 2
    lines = trip_tools.read_text().splitlines()
    assert lines.count("get_forecast Lisbon") == 1
    assert lines.count("find_hotels done Lisbon 3") == 1


def test_slow_trickle_gives_the_same_answer(stack: Traced) -> None:
    session = f"trickle-{uuid.uuid4().hex[:8]}"
    set_session_faults(stack_url(), session, trickle_bytes=48, trickle_delay_ms=1)
    result = invoke(stack, **DEMO, prompt="What should I pack for a city trip?", session_id=session)
    assert result.text.startswith("When you pack for a city trip")
    check_contract(stack.trace(result.local_trace_id), result)


def test_token_budget_stops_the_loop_before_tools_run(stack: Traced, tools: None) -> None:
    result = invoke(stack, **DEMO, prompt="What's the weather in Paris?", max_total_tokens=10)
    assert result.finish_reason == "token_budget_exceeded"
    assert result.counts["tool_calls"] == 0 and result.counts["return_control_rounds"] == 1
    check_contract(stack.trace(result.local_trace_id), result)


def test_unanswered_confirmation_times_out_as_denied(
    stack: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NEXUS_BEDROCK_CONFIRMATION_TIMEOUT_S", "2")
    result = invoke(
        stack, agent_id="PLANNER001", agent_alias_id="TSTALIASID",
        prompt="Book a hotel in Rome for 2 nights",
    )  # fmt: skip
    assert result.tools[0]["confirmation_state"] == "DENY"
    assert "booked:" not in result.text


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_total_tokens": "lots"}, "parameter 'max_total_tokens'"),
        ({"session_attributes": ["not", "a", "mapping"]}, "parameter 'session_attributes'"),
        ({"turn": 0}, "parameter 'turn'"),
        ({"trace_metadata": "x"}, "parameter 'trace_metadata'"),
    ],
)
def test_a_wrong_parameter_type_fails_naming_the_parameter(
    stack: Traced, kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        stack.loop.run(invoke_agent_flow(**DEMO, prompt="Hi", **kwargs))


def test_parameters_from_a_deployment_are_coerced_like_before(stack: Traced) -> None:
    # `prefect deployment run --param max_total_tokens=5000` may hand over a string.
    result = invoke(stack, **DEMO, prompt="What should I pack?", max_total_tokens="5000")
    assert result.finish_reason == "end_turn"


def test_no_server_lookup_of_result_storage_and_persisting_on_request(
    stack: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    import prefect.results

    lookups: list[str] = []
    real = prefect.results._read_server_default_result_storage_block_id

    def counted() -> Any:
        lookups.append("sync")
        return real()

    monkeypatch.setattr(prefect.results, "_read_server_default_result_storage_block_id", counted)
    prompt = "What should I pack for a city trip?"
    result = invoke(stack, **DEMO, prompt=prompt)
    assert result.finish_reason == "end_turn"
    assert lookups == []  # the named storage spares the blocking lookup on the event loop

    persisting = invoke_agent_flow.with_options(persist_result=True)
    state = stack.loop.run(persisting(**DEMO, prompt=prompt, return_state=True))
    stored = state.data  # a result record: written to the storage, read back by result()
    assert stored is not None and stored.metadata.storage_key
    assert Path(stored.metadata.storage_key).is_file()
    again = state.result()
    assert isinstance(again, InvocationResult)
    assert again.text.startswith("When you pack for a city trip")
    assert lookups == []
