"""Every fault kind surfaces as the botocore exception or stream error AWS would give."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EventStreamError
from urllib3.exceptions import ProtocolError

from nexus_bedrock_tasks.local.bedrock.testing import (
    add_request_headers,
    clear_session_faults,
    fault_headers,
    set_session_faults,
)
from tests.local_bedrock.emulator_helpers import answer, demo, drain, function_result, steps

PACK = "What should I pack for a city trip?"


def _collect(response: dict[str, Any]) -> tuple[list[dict[str, Any]], BaseException | None]:
    """The events before the stream failed, and the failure."""
    received: list[dict[str, Any]] = []
    try:
        for event in response["completion"]:
            received.append(event)
    except (EventStreamError, ProtocolError) as exc:
        return received, exc
    finally:
        response["completion"].close()
    return received, None


def _demo_response(client: Any, session_id: str, text: str = PACK, **kwargs: Any) -> Any:
    return client.invoke_agent(
        agentId="DEMO000001",
        agentAliasId="TSTALIASID",
        sessionId=session_id,
        inputText=text,
        enableTrace=True,
        **kwargs,
    )


def test_throttle_first_calls_of_a_session(client: Any, emulator_url: str, session_id: str) -> None:
    set_session_faults(emulator_url, session_id, throttle_first=2)

    for _ in range(2):
        with pytest.raises(ClientError) as caught:
            demo(client, session_id, PACK)
        error = caught.value.response
        assert error["Error"]["Code"] == "ThrottlingException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert error["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"].startswith(
            "ThrottlingException:"
        )
    assert answer(demo(client, session_id, PACK)).startswith("When you pack")
    demo(client, f"{session_id}-other", PACK)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (500, "InternalServerException"),
        (502, "BadGatewayException"),
        (503, "ServiceUnavailableException"),
    ],
)
def test_server_errors_before_the_stream(
    client: Any, emulator_url: str, session_id: str, status: int, code: str
) -> None:
    set_session_faults(
        emulator_url, session_id, throttle_first=1, error_first=1, error_status=status
    )

    with pytest.raises(ClientError) as throttled:
        demo(client, session_id, PACK)
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"
    with pytest.raises(ClientError) as failed:
        demo(client, session_id, PACK)
    assert failed.value.response["Error"]["Code"] == code
    assert failed.value.response["ResponseMetadata"]["HTTPStatusCode"] == status
    demo(client, session_id, PACK)


@pytest.mark.slow
def test_botocore_retries_a_throttled_first_call(
    make_client: Any, test_emulator_url: str, session_id: str
) -> None:
    client = make_client(test_emulator_url, Config(retries={"mode": "standard", "max_attempts": 3}))
    response = client.invoke_agent(
        agentId="FLAKY00001", agentAliasId="TSTALIASID", sessionId=session_id, inputText="hello"
    )
    assert response["ResponseMetadata"]["RetryAttempts"] == 1
    assert (
        answer(drain(response))
        == "I'm flaky. I could not find anything that helps with that request."
    )


def test_yaml_faults_apply_per_session(test_client: Any, session_id: str) -> None:
    for session in (session_id, f"{session_id}-2"):
        with pytest.raises(ClientError) as caught:
            test_client.invoke_agent(
                agentId="FLAKY00001", agentAliasId="TSTALIASID", sessionId=session, inputText="hi"
            )
        assert caught.value.response["Error"]["Code"] == "ThrottlingException"


@pytest.mark.parametrize(
    "exception_type",
    ["throttlingException", "internalServerException", "serviceQuotaExceededException"],
)
def test_in_stream_exception_after_k_events(
    client: Any, emulator_url: str, session_id: str, exception_type: str
) -> None:
    set_session_faults(emulator_url, session_id, stream_error_after=3, stream_error=exception_type)

    received, error = _collect(_demo_response(client, session_id))

    assert len(received) == 3
    assert isinstance(error, EventStreamError)
    assert error.response["Error"]["Code"] == exception_type


def test_in_stream_error_fires_at_the_end_of_a_short_stream(
    client: Any, emulator_url: str, session_id: str
) -> None:
    set_session_faults(emulator_url, session_id, stream_error_after=1000)
    received, error = _collect(_demo_response(client, session_id))
    assert "chunk" in received[-1]
    assert isinstance(error, EventStreamError)


def test_dropped_connection_mid_stream(client: Any, emulator_url: str, session_id: str) -> None:
    set_session_faults(emulator_url, session_id, drop_after=2)

    received, error = _collect(_demo_response(client, session_id))

    assert len(received) == 2
    assert isinstance(error, ProtocolError)


def test_a_cut_stream_leaves_the_session_unchanged(
    client: Any, emulator_url: str, session_id: str
) -> None:
    control = demo(client, session_id, "weather in Madrid")[-1]["returnControl"]
    set_session_faults(emulator_url, session_id, stream_error_after=1)
    state = function_result(control, "Hot")
    _, error = _collect(_demo_response(client, session_id, "", sessionState=state))
    assert isinstance(error, EventStreamError)

    clear_session_faults(emulator_url, session_id)
    events = demo(client, session_id, "", sessionState=state)
    assert answer(events) == "Here is the weather forecast for Madrid: Hot"
    recall = demo(client, session_id, "What did I ask earlier?")
    assert answer(recall) == 'Earlier you asked: "weather in Madrid".'


def test_slow_trickle_delivers_the_same_events(
    client: Any, emulator_url: str, session_id: str
) -> None:
    plain = demo(client, f"{session_id}-plain", PACK)
    set_session_faults(emulator_url, session_id, trickle_bytes=64, trickle_delay_ms=2)

    started = time.monotonic()
    trickled = demo(client, session_id, PACK)

    assert time.monotonic() - started > 0.05
    assert [list(event) for event in trickled] == [list(event) for event in plain]
    assert answer(trickled) == answer(plain)


def test_step_latency_from_a_request_header(client: Any, session_id: str) -> None:
    add_request_headers(client, fault_headers(step_latency_ms=100))

    started = time.monotonic()
    events = demo(client, session_id, PACK)
    elapsed = time.monotonic() - started

    # A knowledge-base answer takes 4 steps: 2 orchestration calls, the lookup, generation.
    assert elapsed >= 0.4
    for output in steps(events, "orchestrationTrace", "modelInvocationOutput"):
        assert output["metadata"]["totalTimeMs"] >= 100


def test_headers_override_session_faults(client: Any, emulator_url: str, session_id: str) -> None:
    set_session_faults(emulator_url, session_id, throttle_first=5)
    add_request_headers(client, {"x-emulator-throttle-first": "0"})

    assert answer(demo(client, session_id, PACK)).startswith("When you pack")


def test_unknown_fault_header_is_a_validation_exception(client: Any, session_id: str) -> None:
    add_request_headers(client, {"x-emulator-explode": "1"})
    with pytest.raises(ClientError) as caught:
        demo(client, session_id, PACK)
    assert caught.value.response["Error"]["Code"] == "ValidationException"
    assert "x-emulator-explode" in caught.value.response["Error"]["Message"]


def test_bad_session_faults_are_refused(emulator_url: str, session_id: str) -> None:
    with pytest.raises(ValueError, match="error_status"):
        set_session_faults(emulator_url, session_id, error_status=418)
    response = httpx.put(
        f"{emulator_url}/_emulator/sessions/{session_id}/faults", json={"drop_after": -1}
    )
    assert response.status_code == 400
    assert response.headers["x-amzn-errortype"].startswith("ValidationException")


def test_step_latency_does_not_serialise_concurrent_invocations(
    make_client: Any, emulator_url: str, session_id: str
) -> None:
    clients = [make_client(emulator_url) for _ in range(4)]
    for client in clients:
        add_request_headers(client, fault_headers(step_latency_ms=100))

    def run(index: int) -> str:
        return answer(demo(clients[index], f"{session_id}-{index}", PACK))

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(run, range(4)))
    elapsed = time.monotonic() - started

    assert len(set(answers)) == 1
    # 4 steps of 100 ms each; run one after the other, 4 invocations would take 1.6 s.
    assert 0.4 <= elapsed < 1.2
