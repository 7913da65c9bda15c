"""Truncated, corrupted and odd streams: a typed error or a partial turn, never a crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.eventstream import EventStreamBuffer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nexus_bedrock_tasks.bedrock.events import decode_completion
from nexus_bedrock_tasks.bedrock.reader import TurnReader, read_raw, read_turn
from nexus_bedrock_tasks.exceptions import StreamDecodeError
from nexus_bedrock_tasks.nexus.records import utcnow
from nexus_bedrock_tasks.nexus.span_builder import turn_spans
from tests import frames

RECORDINGS = sorted((Path(__file__).resolve().parents[1] / "recordings").glob("*.eventstream"))
BODIES = [path.read_bytes() for path in RECORDINGS]


def boundaries(data: bytes) -> set[int]:
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    offsets, position = {0}, 0
    for message in buffer:
        position += message.prelude.total_length
        offsets.add(position)
    return offsets


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(BODIES) - 1), cut=st.floats(0, 1, exclude_max=True))
def test_truncated_stream_gives_partial_turn_with_error(index: int, cut: float) -> None:
    data = BODIES[index]
    length = int(len(data) * cut)
    turn = read_raw(data[:length])
    if length in boundaries(data):
        assert turn.error is None or turn.error_code == "emptyStream"
    else:
        assert turn.finish_reason == "error"
        assert turn.error_code == "streamDecodeError"
        assert "truncated" in (turn.error or "")
    turn_spans(turn, None, fallback_time=utcnow())  # builds without error on partial turns


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    index=st.integers(0, len(BODIES) - 1),
    position=st.floats(0, 1, exclude_max=True),
    flip=st.integers(1, 255),
)
def test_corrupted_byte_is_a_typed_error(index: int, position: float, flip: int) -> None:
    data = bytearray(BODIES[index])
    offset = int(len(data) * position)
    data[offset] ^= flip
    with pytest.raises(StreamDecodeError):
        list(decode_completion(bytes(data)))
    turn = read_raw(bytes(data))
    assert turn.finish_reason == "error" and turn.error_code == "streamDecodeError"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
trace_keys = st.sampled_from(
    [
        "preProcessingTrace", "orchestrationTrace", "postProcessingTrace", "routingClassifierTrace",
        "customOrchestrationTrace", "guardrailTrace", "failureTrace", "somethingNew",
    ]
)  # fmt: skip
inner_keys = st.sampled_from(
    [
        "modelInvocationInput",
        "modelInvocationOutput",
        "rationale",
        "invocationInput",
        "observation",
        "x",
    ]
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(
        st.sampled_from(
            ["chunk", "trace", "returnControl", "files", "weird", "validationException"]
        )
    )
    if kind == "trace":
        inner = draw(st.dictionaries(inner_keys, json_values, max_size=2))
        chain = draw(
            st.lists(
                st.fixed_dictionaries({"agentAliasArn": st.sampled_from(["a", "b", "c"])}),
                max_size=3,
            )
        )
        return {"trace": {"callerChain": chain, "trace": {draw(trace_keys): inner}}}
    if kind == "chunk":
        return {"chunk": {"bytes": draw(st.binary(max_size=10)), "attribution": draw(json_values)}}
    return {kind: draw(json_values)}


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(events(), max_size=12))
def test_arbitrary_event_shapes_never_crash(stream: list[dict[str, Any]]) -> None:
    turn = read_turn(stream)
    assert turn.event_count == len(stream)
    turn_spans(turn, None, fallback_time=utcnow())


def test_in_stream_exception_keeps_partial_answer() -> None:
    data = frames.chunk("Partial ") + frames.exception("throttlingException", "Rate exceeded")
    turn = read_raw(data)
    assert turn.text == "Partial "
    assert turn.finish_reason == "error"
    assert turn.error_code == "throttlingException"
    assert turn.steps[-1].kind == "failure"


def test_return_control_event_is_modelled() -> None:
    payload = {
        "invocationId": "inv-1",
        "invocationInputs": [
            {
                "functionInvocationInput": {
                    "actionGroup": "weather",
                    "function": "get_forecast",
                    "parameters": [{"name": "city", "type": "string", "value": "Paris"}],
                    "actionInvocationType": "RESULT",
                }
            },
            {
                "apiInvocationInput": {
                    "actionGroup": "booking",
                    "apiPath": "/book",
                    "httpMethod": "POST",
                    "actionInvocationType": "USER_CONFIRMATION",
                }
            },
        ],
    }
    turn = read_raw(frames.event("returnControl", payload))
    assert turn.finish_reason == "return_control"
    request = turn.return_control
    assert request is not None and request.invocation_id == "inv-1"
    first, second = request.calls
    assert (first.action_group, first.function, first.confirmation_required) == (
        "weather",
        "get_forecast",
        False,
    )
    assert first.parameters[0].value == "Paris"
    assert (second.api_path, second.http_method, second.confirmation_required) == (
        "/book",
        "POST",
        True,
    )
    spans = turn_spans(turn, None, fallback_time=utcnow())
    assert spans.return_control_span_id == spans.spans[0].local_id
    assert spans.spans[0].output["calls"][0]["parameters"] == {"city": "Paris"}


def test_utf8_split_across_chunks() -> None:
    text = "Zürich ☀ forecast"
    raw = text.encode()
    reader = TurnReader()
    reader.feed({"chunk": {"bytes": raw[:2]}})
    reader.feed({"chunk": {"bytes": raw[2:]}})
    assert reader.finish().text == text


def test_empty_stream_is_an_error() -> None:
    turn = read_turn([])
    assert turn.finish_reason == "error" and turn.error_code == "emptyStream"
