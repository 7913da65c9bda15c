"""returnControl beyond one call (TRIP000001): parallel calls, several rounds, API
operations and failed results, through stock boto3."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.local_bedrock.emulator_helpers import (
    answer,
    drain,
    results_for,
    steps,
    tool_name,
    trip,
)

PARALLEL = "What's the weather in Lisbon and are there hotels for 3 nights?"
ROUNDS = "Check the dates for my itinerary in Porto"
RESERVE = "Please reserve a room in Porto for 2 nights for 3 guests"
LISBON = {
    "weather.get_forecast": "Sunny, 24°C",
    "hotels.find_hotels": "Hotel Avenida, Casa Alfama",
}
LISBON_ANSWER = (
    "Weather in Lisbon: Sunny, 24°C\n\nHotels in Lisbon for 3 nights: Hotel Avenida, Casa Alfama"
)
FREE_DATES = {"calendar.check_dates": "Free from 12 to 15 June, 3 nights"}
PORTO_HOTELS = {"hotels.find_hotels": "Hotel Infante, Pestana Vintage"}
RESERVED = {"booking.POST /reservations": '{"reservationId": "R-1001"}'}


def _control(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The one returnControl event of a stream, which then has no answer."""
    [control] = [event["returnControl"] for event in events if "returnControl" in event]
    assert answer(events) == ""
    payload: dict[str, Any] = control
    return payload


def _validation_error(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException"
    message: str = error["Message"]
    return message


def _action_inputs(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    inputs = steps(events, "orchestrationTrace", "invocationInput")
    return [i["actionGroupInvocationInput"] for i in inputs if "actionGroupInvocationInput" in i]


def _action_outputs(events: list[dict[str, Any]]) -> list[str]:
    observations = steps(events, "orchestrationTrace", "observation")
    return [
        o["actionGroupInvocationOutput"]["text"]
        for o in observations
        if "actionGroupInvocationOutput" in o
    ]


def test_tools_named_in_one_prompt_come_in_one_return_control(client: Any, session_id: str) -> None:
    events = trip(client, session_id, PARALLEL)

    control = _control(events)
    assert [tool_name(entry) for entry in control["invocationInputs"]] == list(LISBON)
    hotels = control["invocationInputs"][1]["functionInvocationInput"]
    assert hotels == {
        "actionGroup": "hotels",
        "actionInvocationType": "RESULT",
        "agentId": "TRIP000001",
        "function": "find_hotels",
        "parameters": [
            {"name": "city", "type": "string", "value": "Lisbon"},
            {"name": "nights", "type": "integer", "value": "3"},
        ],
    }
    # One model turn chose both tools; both inputs carry the event's invocationId.
    outputs = steps(events, "orchestrationTrace", "modelInvocationOutput")
    content = json.loads(outputs[-1]["rawResponse"]["content"])["content"]
    assert [block["name"] for block in content if block["type"] == "tool_use"] == [
        "weather__get_forecast",
        "hotels__find_hotels",
    ]
    assert [i["invocationId"] for i in _action_inputs(events)] == [control["invocationId"]] * 2

    state = results_for(control, LISBON)
    state["returnControlInvocationResults"].reverse()  # any order is fine
    resumed = trip(client, session_id, "", sessionState=state)
    assert answer(resumed) == LISBON_ANSWER
    assert _action_outputs(resumed) == list(LISBON.values())


def test_parallel_calls_follow_the_order_of_the_keywords(client: Any, session_id: str) -> None:
    events = trip(client, session_id, "Any hotels in Lisbon for 3 nights? And the weather?")

    names = [tool_name(entry) for entry in _control(events)["invocationInputs"]]
    assert names == ["hotels.find_hotels", "weather.get_forecast"]


def _drop_one(results: list[dict[str, Any]]) -> None:
    results.pop()


def _add_one(results: list[dict[str, Any]]) -> None:
    results.append(results[0])


def _duplicate(results: list[dict[str, Any]]) -> None:
    results[1] = results[0]


def _rename_function(results: list[dict[str, Any]]) -> None:
    results[1]["functionResult"]["function"] = "find_rooms"


def _as_api_result(results: list[dict[str, Any]]) -> None:
    function = results[1].pop("functionResult")
    results[1]["apiResult"] = {
        "actionGroup": function["actionGroup"],
        "apiPath": "/hotels",
        "httpMethod": "GET",
        "responseBody": {"application/json": {"body": "[]"}},
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_drop_one, "Expected 2 returnControlInvocationResults"),
        (_add_one, "Expected 2 returnControlInvocationResults"),
        (_duplicate, "Two results for weather.get_forecast"),
        (_rename_function, "is for hotels.find_rooms, but returnControl asked for"),
        (_as_api_result, "Expected a functionResult for weather.get_forecast, hotels.find_hotels"),
    ],
)
def test_parallel_results_must_answer_every_call_once(
    client: Any, session_id: str, change: Any, message: str
) -> None:
    control = _control(trip(client, session_id, PARALLEL))
    state = results_for(control, LISBON)
    change(state["returnControlInvocationResults"])

    assert message in _validation_error(lambda: trip(client, session_id, "", sessionState=state))

    # The returnControl is still pending: the right answer still works.
    resumed = trip(client, session_id, "", sessionState=results_for(control, LISBON))
    assert answer(resumed) == LISBON_ANSWER


def test_then_returns_control_again_for_a_second_round(client: Any, session_id: str) -> None:
    first = _control(trip(client, session_id, ROUNDS))
    assert [tool_name(entry) for entry in first["invocationInputs"]] == ["calendar.check_dates"]

    second_events = trip(client, session_id, "", sessionState=results_for(first, FREE_DATES))
    second = _control(second_events)
    assert second["invocationId"] != first["invocationId"]
    hotels = second["invocationInputs"][0]["functionInvocationInput"]
    # The city comes from the prompt, the nights from the first round's result.
    assert (hotels["function"], hotels["parameters"]) == (
        "find_hotels",
        [
            {"name": "city", "type": "string", "value": "Porto"},
            {"name": "nights", "type": "integer", "value": "3"},
        ],
    )
    assert _action_outputs(second_events) == list(FREE_DATES.values())

    stale = results_for(first, PORTO_HOTELS | FREE_DATES)
    assert "doesn't match" in _validation_error(
        lambda: trip(client, session_id, "", sessionState=stale)
    )
    final = trip(client, session_id, "", sessionState=results_for(second, PORTO_HOTELS))
    assert answer(final) == (
        "Free dates for Porto: Free from 12 to 15 June, 3 nights\n\n"
        "Hotels in Porto for 3 nights: Hotel Infante, Pestana Vintage"
    )


def test_then_does_not_call_a_tool_twice(client: Any, session_id: str) -> None:
    control = _control(trip(client, session_id, "Check dates and hotels in Porto for 3 nights"))
    assert [tool_name(entry) for entry in control["invocationInputs"]] == [
        "calendar.check_dates",
        "hotels.find_hotels",
    ]

    events = trip(
        client, session_id, "", sessionState=results_for(control, FREE_DATES | PORTO_HOTELS)
    )
    assert answer(events) == (
        "Free dates for Porto: Free from 12 to 15 June, 3 nights\n\n"
        "Hotels in Porto for 3 nights: Hotel Infante, Pestana Vintage"
    )


def test_a_failed_round_ends_the_chain(client: Any, session_id: str) -> None:
    control = _control(trip(client, session_id, ROUNDS))
    failed = {"calendar.check_dates": "calendar offline"}
    state = results_for(control, failed, states={"calendar.check_dates": "FAILURE"})

    events = trip(client, session_id, "", sessionState=state)
    assert answer(events) == "calendar.check_dates failed: calendar offline"
    assert not [event for event in events if "returnControl" in event]


def test_a_chained_call_missing_a_parameter_asks_the_user(client: Any, session_id: str) -> None:
    control = _control(trip(client, session_id, ROUNDS))
    vague = {"calendar.check_dates": "Free most of June"}

    events = trip(client, session_id, "", sessionState=results_for(control, vague))
    assert answer(events) == (
        "Free dates for Porto: Free most of June\n\n"
        "To use hotels.find_hotels I need the nights. Please tell me the nights."
    )
    final = steps(events, "orchestrationTrace", "observation")[-1]
    assert final["type"] == "ASK_USER"


def test_an_api_operation_returns_an_api_invocation_input(client: Any, session_id: str) -> None:
    events = trip(client, session_id, RESERVE)

    control = _control(events)
    assert control["invocationInputs"] == [
        {
            "apiInvocationInput": {
                "actionGroup": "booking",
                "actionInvocationType": "RESULT",
                "agentId": "TRIP000001",
                "apiPath": "/reservations",
                "httpMethod": "POST",
                "parameters": [{"name": "city", "type": "string", "value": "Porto"}],
                "requestBody": {
                    "content": {
                        "application/json": {
                            "properties": [
                                {"name": "nights", "type": "integer", "value": "2"},
                                {"name": "guests", "type": "integer", "value": "3"},
                            ]
                        }
                    }
                },
            }
        }
    ]
    [traced] = _action_inputs(events)
    assert (traced["apiPath"], traced["verb"], "function" in traced) == (
        "/reservations",
        "POST",
        False,
    )
    assert traced["requestBody"]["content"]["application/json"][0]["name"] == "nights"

    resumed = trip(client, session_id, "", sessionState=results_for(control, RESERVED))
    assert answer(resumed) == 'Reservation made in Porto for 2 nights: {"reservationId": "R-1001"}'


def _wrong_path(result: dict[str, Any]) -> None:
    result["apiResult"]["apiPath"] = "/bookings"


def _wrong_method(result: dict[str, Any]) -> None:
    result["apiResult"]["httpMethod"] = "GET"


def _as_function_result(result: dict[str, Any]) -> None:
    api = result.pop("apiResult")
    result["functionResult"] = {
        "actionGroup": api["actionGroup"],
        "function": "reservations",
        "responseBody": {"TEXT": {"body": "ok"}},
    }


def _no_json_body(result: dict[str, Any]) -> None:
    result["apiResult"]["responseBody"] = {"TEXT": {"body": "ok"}}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_wrong_path, "is for booking.POST /bookings, but returnControl asked for"),
        (_wrong_method, "is for booking.GET /reservations"),
        (_as_function_result, "Expected an apiResult for booking.POST /reservations"),
        (_no_json_body, "apiResult.responseBody.application/json.body is required"),
    ],
)
def test_api_results_must_match_the_operation(
    client: Any, session_id: str, change: Any, message: str
) -> None:
    control = _control(trip(client, session_id, RESERVE))
    state = results_for(control, RESERVED)
    change(state["returnControlInvocationResults"][0])

    assert message in _validation_error(lambda: trip(client, session_id, "", sessionState=state))


@pytest.mark.parametrize(
    ("prompt", "bodies", "state", "expected"),
    [
        (
            PARALLEL,
            {**LISBON, "weather.get_forecast": "forecast service timed out"},
            {"weather.get_forecast": "FAILURE"},
            "weather.get_forecast failed: forecast service timed out\n\n"
            "Hotels in Lisbon for 3 nights: Hotel Avenida, Casa Alfama",
        ),
        (
            RESERVE,
            {"booking.POST /reservations": "guests must be at most 2"},
            {"booking.POST /reservations": "REPROMPT"},
            "booking.POST /reservations rejected the request: guests must be at most 2",
        ),
    ],
)
def test_failed_results_are_reported_not_quoted(
    client: Any,
    session_id: str,
    prompt: str,
    bodies: dict[str, str],
    state: dict[str, str],
    expected: str,
) -> None:
    control = _control(trip(client, session_id, prompt))

    events = trip(client, session_id, "", sessionState=results_for(control, bodies, state))
    assert answer(events) == expected


def test_an_unknown_response_state_is_refused(client: Any, session_id: str) -> None:
    control = _control(trip(client, session_id, RESERVE))
    state = results_for(control, RESERVED, states={"booking.POST /reservations": "MAYBE"})

    message = _validation_error(lambda: trip(client, session_id, "", sessionState=state))
    assert "responseState must be FAILURE or REPROMPT" in message


def test_inline_agents_return_parallel_calls_too(client: Any, session_id: str) -> None:
    city = {"city": {"type": "string", "required": True}}
    groups = [
        {
            "actionGroupName": name,
            "actionGroupExecutor": {"customControl": "RETURN_CONTROL"},
            "functionSchema": {"functions": [{"name": function, "parameters": city}]},
        }
        for name, function in (("weather", "get_forecast"), ("hotels", "find_hotels"))
    ]
    response = client.invoke_inline_agent(
        sessionId=session_id,
        foundationModel="anthropic.claude-3-haiku-20240307-v1:0",
        instruction="You are a helpful travel assistant for inline tests.",
        inputText="Weather and hotels in Rome?",
        enableTrace=True,
        actionGroups=groups,
    )

    control = _control(drain(response))
    assert [tool_name(entry) for entry in control["invocationInputs"]] == [
        "weather.get_forecast",
        "hotels.find_hotels",
    ]
    assert all("agentId" not in e["functionInvocationInput"] for e in control["invocationInputs"])
