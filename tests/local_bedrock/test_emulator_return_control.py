"""returnControl round trips and the ValidationExceptions of a bad resume."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from nexus_bedrock_tasks.local.bedrock.handlers import book_hotel
from tests.local_bedrock.emulator_helpers import answer, demo, drain, function_result, steps

WEATHER = "What's the weather in Paris?"


def _validation_error(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    message: str = error["Error"]["Message"]
    return message


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"invocationId": "not-the-pending-one"}, "doesn't match"),
        ({"invocationId": None}, "invocationId is required"),
        ({"function": "get_history"}, "weather.get_history"),
        ({"actionGroup": "climate"}, "climate.get_forecast"),
        ({"responseBody": None}, "responseBody.TEXT.body is required"),
        ({"results": []}, "Expected 1"),
        ({"apiResult": True}, "Expected a functionResult"),
    ],
)
def test_a_wrong_or_missing_result_is_a_validation_exception(
    client: Any, session_id: str, change: dict[str, Any], message: str
) -> None:
    control = demo(client, session_id, WEATHER)[-1]["returnControl"]
    state = function_result(control, "Sunny")
    result = state["returnControlInvocationResults"][0]["functionResult"]
    if "invocationId" in change:
        if change["invocationId"] is None:
            del state["invocationId"]
        else:
            state["invocationId"] = change["invocationId"]
    for key in ("function", "actionGroup"):
        if key in change:
            result[key] = change[key]
    if "responseBody" in change:
        del result["responseBody"]
    if "results" in change:
        state["returnControlInvocationResults"] = [
            {"functionResult": result},
            {"functionResult": result},
        ]
    if "apiResult" in change:
        state["returnControlInvocationResults"] = [
            {"apiResult": {"actionGroup": "weather", "apiPath": "/forecast", "httpMethod": "GET"}}
        ]

    text = _validation_error(lambda: demo(client, session_id, "", sessionState=state))
    assert message in text

    # A refused resume leaves the returnControl pending: the right answer still works.
    events = demo(client, session_id, "", sessionState=function_result(control, "Sunny"))
    assert answer(events) == "Here is the weather forecast for Paris: Sunny"


def test_results_without_a_pending_return_control_are_refused(client: Any, session_id: str) -> None:
    control = demo(client, session_id, WEATHER)[-1]["returnControl"]
    demo(client, session_id, "", sessionState=function_result(control, "Sunny"))

    replay = function_result(control, "Sunny")
    message = _validation_error(lambda: demo(client, session_id, "", sessionState=replay))
    assert "no pending returnControl" in message


def test_a_new_question_while_control_is_returned_is_refused(client: Any, session_id: str) -> None:
    control = demo(client, session_id, WEATHER)[-1]["returnControl"]

    message = _validation_error(lambda: demo(client, session_id, "What should I pack?"))
    assert control["invocationId"] in message


def test_end_session_discards_a_pending_return_control(client: Any, session_id: str) -> None:
    control = demo(client, session_id, WEATHER)[-1]["returnControl"]

    events = demo(client, session_id, "What should I pack?", endSession=True)
    assert answer(events).startswith("When you pack")

    stale = function_result(control, "Sunny")
    message = _validation_error(lambda: demo(client, session_id, "", sessionState=stale))
    assert "no pending returnControl" in message


def test_end_session_without_input_just_ends_it(client: Any, session_id: str) -> None:
    control = demo(client, session_id, WEATHER)[-1]["returnControl"]
    assert demo(client, session_id, "", endSession=True) == []
    stale = function_result(control, "Sunny")
    _validation_error(lambda: demo(client, session_id, "", sessionState=stale))


def test_a_failed_result_is_reported_in_the_answer(client: Any, session_id: str) -> None:
    control = demo(client, session_id, WEATHER)[-1]["returnControl"]
    state = function_result(control, "service down", responseState="FAILURE")

    events = demo(client, session_id, "", sessionState=state)
    assert answer(events) == "weather.get_forecast failed: service down"


def _plan(client: Any, session_id: str, text: str, **kwargs: Any) -> list[dict[str, Any]]:
    response = client.invoke_agent(
        agentId="PLANNER001",
        agentAliasId="TSTALIASID",
        sessionId=session_id,
        inputText=text,
        enableTrace=True,
        **kwargs,
    )
    return drain(response)


def test_user_confirmation_then_the_agent_runs_its_lambda(client: Any, session_id: str) -> None:
    first = _plan(client, session_id, "Please book a hotel in Lisbon for 3 nights")
    control = first[-1]["returnControl"]
    request = control["invocationInputs"][0]["functionInvocationInput"]
    assert request["actionInvocationType"] == "USER_CONFIRMATION"
    assert request["parameters"] == [
        {"name": "city", "type": "string", "value": "Lisbon"},
        {"name": "nights", "type": "integer", "value": "3"},
    ]

    events = _plan(
        client,
        session_id,
        "",
        sessionState=function_result(control, None, confirmationState="CONFIRM"),
    )
    booked = book_hotel({"city": "Lisbon", "nights": 3})
    assert answer(events) == f"Your hotel is booked: {booked}"
    [output] = [
        o
        for o in steps(events, "orchestrationTrace", "observation")
        if "actionGroupInvocationOutput" in o
    ]
    assert output["actionGroupInvocationOutput"]["text"] == booked
    assert output["actionGroupInvocationOutput"]["metadata"]["totalTimeMs"] >= 0


def test_user_denial_skips_the_action(client: Any, session_id: str) -> None:
    control = _plan(client, session_id, "Book a hotel in Rome for 2 nights")[-1]["returnControl"]

    state = function_result(control, None, confirmationState="DENY")
    events = _plan(client, session_id, "", sessionState=state)
    assert answer(events) == "I did not run booking.book_hotel because it was not confirmed."


def test_user_confirmation_needs_a_confirmation_state(client: Any, session_id: str) -> None:
    control = _plan(client, session_id, "Book a hotel in Rome for 2 nights")[-1]["returnControl"]

    state = function_result(control, "ok")
    message = _validation_error(lambda: _plan(client, session_id, "", sessionState=state))
    assert "confirmationState" in message
