"""Fault injection for tests of clients: outages, slowness, lost answers, revoked keys.

Off unless the app is created with `faults=True` (CLI `--faults`). Then the knobs are
`app.state.faults` (a `FaultInjector`, for in-process tests) and, over HTTP with the API
key, `GET|PUT|DELETE /_faults` (for a server in another process)::

    nexus.faults.fail_next(3)                  # next 3 API requests: 503, nothing stored
    nexus.faults.fail_next(1, status=429, retry_after=2)
    nexus.faults.delay_s = 0.5                 # every answer waits 0.5 s (after storing)
    nexus.faults.drop_next_responses(1)        # store, then close the connection unanswered
    nexus.faults.unauthorized = True           # every API request: 401 Invalid API key
    nexus.faults.flap_every = 3                # every 3rd API request: 503, nothing stored
    nexus.faults.max_payload_chars = 3000      # a span whose input/output/error is longer: 400
    nexus.faults.clear()

    PUT /_faults {"fail_next": 3, "fail_status": 503, "retry_after": null, "delay_s": 0,
                  "drop_next_responses": 0, "unauthorized": false, "flap_every": 0,
                  "max_payload_chars": null}
                  (sets every knob; a missing key takes the default shown)

Faults touch only the API (`/api/...`, `/v1/...`); the web page, `/health` and `/_faults`
itself always answer normally. A dropped response sends its status line, then the
connection closes before the body: clients see a protocol error (`httpx.RemoteProtocolError`),
although the request was stored, which is what a reset after a commit looks like.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Final

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nexus_bedrock_tasks.local.nexus.api import INVALID_API_KEY, ApiError, KeyCheck
from nexus_bedrock_tasks.local.nexus.validation import parse_body

FAULTS_PATH: Final = "/_faults"
_API_PREFIXES: Final = ("/api/", "/v1/")


class FaultSettings(BaseModel):
    """All knobs at once: the body of `PUT /_faults` (missing keys take these defaults)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    fail_next: int = Field(default=0, ge=0)
    fail_status: int = Field(default=503, ge=400, le=599)
    retry_after: float | None = Field(default=None, ge=0)
    delay_s: float = Field(default=0.0, ge=0)
    drop_next_responses: int = Field(default=0, ge=0)
    unauthorized: bool = False
    flap_every: int = Field(default=0, ge=0)
    max_payload_chars: int | None = Field(default=None, ge=1)


class FaultInjector:
    """Thread-safe fault knobs (set from a test thread, read on the server's event loop).

    Attributes:
        delay_s: seconds every API answer waits, after the request was handled.
        unauthorized: answer every API request with 401, as if the key were revoked.
        flap_every: answer every Nth API request with 503 (0: never), as a flapping
            load balancer does; counted over every API request since the knob was set.
        max_payload_chars: refuse a span whose `input`, `output` or `error` text is longer
            with `400 {"error": "Validation failed", "fields": {...}}` (None: no limit).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._requests = 0

    @property
    def delay_s(self) -> float:
        return self._settings.delay_s

    @delay_s.setter
    def delay_s(self, seconds: float) -> None:
        with self._lock:
            self._settings.delay_s = seconds

    @property
    def unauthorized(self) -> bool:
        return self._settings.unauthorized

    @unauthorized.setter
    def unauthorized(self, value: bool) -> None:
        with self._lock:
            self._settings.unauthorized = value

    @property
    def flap_every(self) -> int:
        return self._settings.flap_every

    @flap_every.setter
    def flap_every(self, every: int) -> None:
        with self._lock:
            self._settings.flap_every = every
            self._requests = 0

    @property
    def max_payload_chars(self) -> int | None:
        return self._settings.max_payload_chars

    @max_payload_chars.setter
    def max_payload_chars(self, limit: int | None) -> None:
        with self._lock:
            self._settings.max_payload_chars = limit

    def fail_next(self, count: int, status: int = 503, retry_after: float | None = None) -> None:
        """Answer the next `count` API requests with `status` without handling them.

        Args:
            count: how many requests fail.
            status: the status code (503 by default; 429, 500, 502 are other useful ones).
            retry_after: seconds to send as `Retry-After`, or no header.
        """
        with self._lock:
            self._settings.fail_next = count
            self._settings.fail_status = status
            self._settings.retry_after = retry_after

    def drop_next_responses(self, count: int) -> None:
        """Handle (store) the next `count` API requests, then close without an answer."""
        with self._lock:
            self._settings.drop_next_responses = count

    def apply(self, settings: FaultSettings) -> None:
        """Replace every knob at once."""
        with self._lock:
            self._settings = settings.model_copy()
            self._requests = 0

    def clear(self) -> None:
        """Back to normal service."""
        self.apply(FaultSettings())

    def snapshot(self) -> FaultSettings:
        """A copy of the current knobs."""
        with self._lock:
            return self._settings.model_copy()

    def take_failure(self) -> tuple[int, float | None] | None:
        """Consume one planned failure: `(status, retry_after)`, or `None`."""
        with self._lock:
            self._requests += 1
            every = self._settings.flap_every
            if every and self._requests % every == 0:
                return 503, None
            if self._settings.fail_next <= 0:
                return None
            self._settings.fail_next -= 1
            return self._settings.fail_status, self._settings.retry_after

    def take_drop(self) -> bool:
        """Consume one planned dropped response."""
        with self._lock:
            if self._settings.drop_next_responses <= 0:
                return False
            self._settings.drop_next_responses -= 1
            return True


class FaultMiddleware:
    """ASGI middleware applying a `FaultInjector` to API requests."""

    def __init__(self, app: ASGIApp, faults: FaultInjector) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(_API_PREFIXES):
            await self.app(scope, receive, send)
            return
        if self.faults.unauthorized:
            await JSONResponse(INVALID_API_KEY, status_code=401)(scope, receive, send)
            return
        failure = self.faults.take_failure()
        if failure is not None:
            status, retry_after = failure
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            body = {"error": f"Injected fault: HTTP {status}"}
            await JSONResponse(body, status_code=status, headers=headers)(scope, receive, send)
            return
        limit = self.faults.max_payload_chars
        if (
            limit is not None
            and scope["method"] == "POST"
            and str(scope["path"]).endswith("/spans")
        ):
            raw = await _read_body(receive)
            too_long = _oversized_fields(raw, limit)
            if too_long:
                answer = {"error": "Validation failed", "fields": too_long}
                await JSONResponse(answer, status_code=400)(scope, receive, send)
                return
            receive = _replay(raw)
        drop, delay_s = self.faults.take_drop(), self.faults.delay_s

        async def send_faulty(message: Message) -> None:
            if message["type"] == "http.response.start" and delay_s > 0:
                await asyncio.sleep(delay_s)
            if drop and message["type"] == "http.response.body":
                # The ASGI server closes a connection whose response never completes.
                return
            await send(message)

        await self.app(scope, receive, send_faulty)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes) -> Receive:
    """A `receive` that hands the already read body to the app once."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


def _oversized_fields(body: bytes, limit: int) -> dict[str, str]:
    """`{field: message}` for each span payload field longer than `limit` characters."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return {}
    if not isinstance(parsed, dict):
        return {}
    fields: dict[str, str] = {}
    for key in ("input", "output", "error"):
        value = parsed.get(key)
        text = value if isinstance(value, str) or value is None else json.dumps(value)
        if text is not None and len(text) > limit:
            fields[key] = f"Too long: {len(text)} characters, at most {limit}"
    return fields


def build_faults_router(faults: FaultInjector, keys: KeyCheck) -> APIRouter:
    """`GET|PUT|DELETE /_faults` (the API key is required; faults never apply here)."""
    router = APIRouter(dependencies=[Depends(keys.require_bearer)])

    @router.get(FAULTS_PATH)
    async def show_faults() -> JSONResponse:
        return JSONResponse(faults.snapshot().model_dump())

    @router.put(FAULTS_PATH)
    async def set_faults(request: Request) -> JSONResponse:
        try:
            settings = FaultSettings.model_validate(parse_body(await request.body()))
        except ValidationError as exc:
            fields = {".".join(map(str, err["loc"])): err["msg"] for err in exc.errors()}
            raise ApiError(400, {"error": "Validation failed", "fields": fields}) from exc
        faults.apply(settings)
        return JSONResponse(faults.snapshot().model_dump())

    @router.delete(FAULTS_PATH)
    async def clear_faults() -> JSONResponse:
        faults.clear()
        return JSONResponse(faults.snapshot().model_dump())

    return router
