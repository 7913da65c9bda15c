"""A minimal AWS event-stream frame encoder for tests (independent of the emulator's)."""

from __future__ import annotations

import base64
import binascii
import json
import struct
from typing import Any


def _header(name: str, value: str) -> bytes:
    raw_name = name.encode()
    raw_value = value.encode()
    return (
        struct.pack("!B", len(raw_name))
        + raw_name
        + b"\x07"
        + struct.pack("!H", len(raw_value))
        + raw_value
    )


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One message: prelude (lengths + CRC), headers, payload, message CRC."""
    raw_headers = b"".join(_header(k, v) for k, v in headers.items())
    total = 12 + len(raw_headers) + len(payload) + 4
    prelude = struct.pack("!II", total, len(raw_headers))
    prelude += struct.pack("!I", binascii.crc32(prelude) & 0xFFFFFFFF)
    body = prelude + raw_headers + payload
    return body + struct.pack("!I", binascii.crc32(body) & 0xFFFFFFFF)


def event(event_type: str, payload: dict[str, Any]) -> bytes:
    """An `event` message as Bedrock sends it (JSON payload)."""
    return frame(
        {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"},
        json.dumps(payload).encode(),
    )


def chunk(text: str) -> bytes:
    """A `chunk` event whose bytes are `text`."""
    return event("chunk", {"bytes": base64.b64encode(text.encode()).decode()})


def exception(code: str, message: str) -> bytes:
    """An in-stream modelled exception message."""
    return frame(
        {
            ":exception-type": code,
            ":content-type": "application/json",
            ":message-type": "exception",
        },
        json.dumps({"message": message}).encode(),
    )
