"""Fault injection: what can go wrong, where it is configured, and how it is counted.

Faults come from three places; for each field the most specific one wins: request header >
session faults (``PUT /_emulator/sessions/{sessionId}/faults``) > the agent's ``faults:``
block in the YAML file. Fields (YAML/JSON key, request header, effect):

- ``step_latency_ms`` / ``x-emulator-step-latency-ms``: sleep before every step completes
  (a step is one model call, one knowledge-base lookup or one Lambda run).
- ``throttle_first`` / ``x-emulator-throttle-first``: the first N calls of a session get
  HTTP 429 ``ThrottlingException`` before the stream.
- ``error_first`` / ``x-emulator-error-first``: the next N calls get a 5xx before the stream.
- ``error_status`` / ``x-emulator-error-status``: that 5xx: 500 ``InternalServerException``
  (default), 502 ``BadGatewayException`` or 503 ``ServiceUnavailableException``.
- ``stream_error_after`` / ``x-emulator-stream-error-after``: after K events, send an
  in-stream exception message and end the stream.
- ``stream_error`` / ``x-emulator-stream-error``: its ``:exception-type`` (default
  ``internalServerException``; any exception member of ``ResponseStream``).
- ``drop_after`` / ``x-emulator-drop-after``: after K events, abort the connection without
  ending the chunked HTTP body.
- ``stall_after`` / ``x-emulator-stall-after`` and ``stall_ms`` / ``x-emulator-stall-ms``:
  after K events, send nothing for that many ms (then the rest of the stream), as a
  connection that goes quiet longer than a client's read timeout.
- ``stream_faults_first`` / ``x-emulator-stream-faults-first``: ``stream_error_after``,
  ``drop_after`` and ``stall_after`` hit only the first N streamed calls of a session
  (then calls succeed: a client that re-invokes recovers).
- ``trickle_bytes`` / ``x-emulator-trickle-bytes`` and ``trickle_delay_ms`` /
  ``x-emulator-trickle-delay-ms``: write every message in pieces of that many bytes, that
  many ms apart.

Calls are counted per (agent, session): call number n of a session is throttled when
n <= throttle_first and gets the 5xx when throttle_first < n <= throttle_first + error_first,
so a test that uses its own session id sees the same faults on every run, whatever else the
server is doing. botocore's own retries are calls too. If the stream has fewer than K
events, ``stream_error_after`` and ``drop_after`` fire after the last one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from nexus_bedrock_tasks.local.bedrock.errors import AwsError, validation_error
from nexus_bedrock_tasks.local.bedrock.eventstream import exception_message

HEADER_PREFIX = "x-emulator-"

StreamErrorType = Literal[
    "throttlingException",
    "internalServerException",
    "serviceQuotaExceededException",
    "dependencyFailedException",
    "badGatewayException",
    "modelNotReadyException",
    "validationException",
    "accessDeniedException",
    "resourceNotFoundException",
    "conflictException",
]
_ERROR_TYPE_BY_STATUS = {
    500: "InternalServerException",
    502: "BadGatewayException",
    503: "ServiceUnavailableException",
}


class FaultSpec(BaseModel):
    """The faults applied to one request (all off by default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    step_latency_ms: float = Field(default=0, ge=0)
    throttle_first: int = Field(default=0, ge=0)
    error_first: int = Field(default=0, ge=0)
    error_status: int = 500
    stream_error_after: int | None = Field(default=None, ge=0)
    stream_error: StreamErrorType = "internalServerException"
    drop_after: int | None = Field(default=None, ge=0)
    stream_faults_first: int | None = Field(default=None, ge=0)
    trickle_bytes: int = Field(default=0, ge=0)
    trickle_delay_ms: float = Field(default=0, ge=0)
    stall_after: int | None = Field(default=None, ge=0)
    stall_ms: float = Field(default=0, ge=0)

    @field_validator("error_status")
    @classmethod
    def _known_status(cls, value: int) -> int:
        if value not in _ERROR_TYPE_BY_STATUS:
            raise ValueError(f"must be one of {sorted(_ERROR_TYPE_BY_STATUS)}")
        return value

    def for_streamed_call(self, number: int) -> FaultSpec:
        """The faults of a session's `number`-th call that got a stream (1-based)."""
        if self.stream_faults_first is None or number <= self.stream_faults_first:
            return self
        return self.model_copy(
            update={"stream_error_after": None, "drop_after": None, "stall_after": None}
        )

    def overridden_by(self, other: FaultSpec) -> FaultSpec:
        """This spec with every field that `other` sets explicitly replaced."""
        return self.model_copy(update={k: getattr(other, k) for k in other.model_fields_set})


def header_name(field: str) -> str:
    """The request header that sets `field`, e.g. ``x-emulator-step-latency-ms``."""
    return HEADER_PREFIX + field.replace("_", "-")


def faults_from_headers(headers: Mapping[str, str]) -> FaultSpec:
    """The faults a request asks for in its ``x-emulator-*`` headers.

    Raises:
        AwsError: ``ValidationException`` for an unknown header or a bad value.
    """
    fields = {header_name(name): name for name in FaultSpec.model_fields}
    values: dict[str, str] = {}
    for key, value in headers.items():
        key = key.lower()
        if not key.startswith(HEADER_PREFIX):
            continue
        if key not in fields:
            raise validation_error(f"unknown emulator header {key}; known: {sorted(fields)}")
        values[fields[key]] = value
    return parse_faults(values)


def parse_faults(values: Mapping[str, object]) -> FaultSpec:
    """Validate a fault mapping (YAML, JSON body or headers).

    Raises:
        AwsError: ``ValidationException`` naming the bad field.
    """
    try:
        return FaultSpec.model_validate(dict(values))
    except ValidationError as exc:
        raise validation_error(f"bad emulator faults: {exc}") from exc


class CallCounter:
    """Counts calls per (agent, session) to decide the throttle and 5xx faults."""

    def __init__(self) -> None:
        self._calls: dict[tuple[str, str], int] = {}

    def check(self, agent_key: str, session_id: str, faults: FaultSpec) -> FaultSpec:
        """Count this call and raise the pre-stream error it is due, if any.

        Returns:
            The faults left for the call's stream.

        Raises:
            AwsError: ``ThrottlingException`` (429) or the configured 5xx error.
        """
        key = (agent_key, session_id)
        number = self._calls.get(key, 0) + 1
        self._calls[key] = number
        if number <= faults.throttle_first:
            raise AwsError("ThrottlingException", "Rate exceeded (emulator fault).")
        if number <= faults.throttle_first + faults.error_first:
            raise AwsError(
                _ERROR_TYPE_BY_STATUS[faults.error_status],
                f"Injected {faults.error_status} error (emulator fault).",
            )
        return faults.for_streamed_call(number - faults.throttle_first - faults.error_first)

    def reset(self) -> None:
        """Forget all counts."""
        self._calls.clear()


class InjectedConnectionDrop(Exception):
    """Raised inside the response body so that the server aborts the connection."""


async def apply_stream_faults(
    messages: AsyncGenerator[bytes, None], faults: FaultSpec
) -> AsyncIterator[bytes]:
    """Pass `messages` through, injecting the in-stream faults of `faults`.

    Stopping early closes `messages`, so the producer's cleanup runs but not its commit
    (a cut stream leaves the session as it was).

    Raises:
        InjectedConnectionDrop: when ``drop_after`` is due.
    """
    sent = 0
    try:
        async for message in messages:
            if _due(faults.drop_after, sent) or _due(faults.stream_error_after, sent):
                break
            if faults.stall_after is not None and sent == faults.stall_after:
                await asyncio.sleep(faults.stall_ms / 1000)
            async for piece in _trickle(message, faults):
                yield piece
            sent += 1
    finally:
        await messages.aclose()
    if faults.drop_after is not None:
        raise InjectedConnectionDrop(f"dropped the connection after {sent} events")
    if faults.stream_error_after is not None:
        yield exception_message(faults.stream_error, "Injected stream error (emulator fault).")


def _due(limit: int | None, sent: int) -> bool:
    return limit is not None and sent >= limit


async def _trickle(message: bytes, faults: FaultSpec) -> AsyncIterator[bytes]:
    if faults.trickle_bytes <= 0:
        yield message
        return
    for start in range(0, len(message), faults.trickle_bytes):
        if start:
            await asyncio.sleep(faults.trickle_delay_ms / 1000)
        yield message[start : start + faults.trickle_bytes]
