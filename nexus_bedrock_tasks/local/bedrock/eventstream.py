"""AWS event-stream framing, the encoder side of `botocore.eventstream`.

A message is: prelude (total length, headers length, CRC32 of those 8 bytes), headers
(name length u8, name, type 7 = string, value length u16, value), payload, CRC32 of
everything before it. All integers are big-endian. JSON payloads are serialised the way
AWS does (compact, sorted keys, UTF-8 rather than ``\\u`` escapes) so recorded and emulated
bodies look alike byte for byte.
"""

from __future__ import annotations

import binascii
import json
import struct
from collections.abc import Mapping
from typing import Any

CONTENT_TYPE_JSON = "application/json"
STREAM_CONTENT_TYPE = "application/vnd.amazon.eventstream"
_STRING_HEADER_TYPE = 7
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _crc32(data: bytes, seed: int = 0) -> int:
    return binascii.crc32(data, seed) & 0xFFFFFFFF


def _encode_headers(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name = name.encode("utf-8")
        raw_value = value.encode("utf-8")
        out += struct.pack(">B", len(raw_name)) + raw_name
        out += struct.pack(">BH", _STRING_HEADER_TYPE, len(raw_value)) + raw_value
    return bytes(out)


def encode_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One complete event-stream message with correct prelude and message CRCs."""
    raw_headers = _encode_headers(headers)
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    prelude += _CRC.pack(_crc32(prelude))
    body = prelude + raw_headers + payload
    return body + _CRC.pack(_crc32(body))


def dump_json(value: Any) -> bytes:
    """JSON bytes in AWS's wire style."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def event_message(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """An ``event`` message (``chunk``, ``trace``, ``returnControl``, ``files``)."""
    headers = {
        ":event-type": event_type,
        ":content-type": CONTENT_TYPE_JSON,
        ":message-type": "event",
    }
    return encode_message(headers, dump_json(payload))


def exception_message(exception_type: str, message: str) -> bytes:
    """A modelled in-stream exception, e.g. ``throttlingException``."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": CONTENT_TYPE_JSON,
        ":message-type": "exception",
    }
    return encode_message(headers, dump_json({"message": message}))


def split_messages(body: bytes) -> list[bytes]:
    """Cut a recorded body into its messages by their prelude lengths (no CRC check)."""
    messages: list[bytes] = []
    offset = 0
    while offset + _PRELUDE.size <= len(body):
        total, _ = _PRELUDE.unpack_from(body, offset)
        if total < _PRELUDE.size or offset + total > len(body):
            break
        messages.append(body[offset : offset + total])
        offset += total
    if offset != len(body):
        raise ValueError(f"event stream has {len(body) - offset} trailing bytes at {offset}")
    return messages
