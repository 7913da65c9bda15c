"""Decode raw InvokeAgent response bodies into the event dicts boto3 yields.

The decoding goes through botocore's own event-stream buffer and parser with the
`bedrock-agent-runtime` service model, so a recorded body and a live
``response["completion"]`` produce identical dicts (``chunk.bytes`` as bytes, modelled
exceptions raised as `botocore.exceptions.EventStreamError`).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

from botocore.eventstream import EventStreamBuffer, ParserError
from botocore.exceptions import EventStreamError
from botocore.parsers import EventStreamJSONParser

from nexus_bedrock_tasks.exceptions import StreamDecodeError

SERVICE_NAME = "bedrock-agent-runtime"
_STREAM_MEMBER = {"InvokeAgent": "completion", "InvokeInlineAgent": "completion"}


@functools.lru_cache(maxsize=4)
def _stream_shape(operation: str) -> Any:
    import botocore.session

    model = botocore.session.get_session().get_service_model(SERVICE_NAME)
    output_shape: Any = model.operation_model(operation).output_shape
    return output_shape.members[_STREAM_MEMBER[operation]]


def decode_completion(data: bytes, operation: str = "InvokeAgent") -> Iterator[dict[str, Any]]:
    """Yield the events of a raw InvokeAgent body exactly as boto3 would.

    Args:
        data: the HTTP response body (`application/vnd.amazon.eventstream`).
        operation: ``InvokeAgent`` or ``InvokeInlineAgent``.

    Raises:
        StreamDecodeError: bad framing, a CRC mismatch, or a body cut mid-message.
        botocore.exceptions.EventStreamError: a modelled exception in the stream.

    Example:
        >>> events = decode_completion(open("kb_lookup.eventstream", "rb").read())
        >>> next(iter(events)).keys()
        dict_keys(['trace'])
    """
    shape = _stream_shape(operation)
    parser = EventStreamJSONParser()
    buffer = EventStreamBuffer()
    buffer.add_data(data)
    consumed = 0
    try:
        message: Any
        for message in buffer:
            consumed += message.prelude.total_length
            response = message.to_response_dict()
            parsed = parser.parse(response, shape)
            if response["status_code"] != 200:
                raise EventStreamError(parsed, operation)
            if parsed:
                yield parsed
    except ParserError as exc:
        raise StreamDecodeError(f"corrupt event stream after {consumed} bytes: {exc}") from exc
    if consumed != len(data):
        raise StreamDecodeError(
            f"event stream truncated: {len(data) - consumed} trailing bytes of an incomplete "
            f"message after {consumed} bytes"
        )
