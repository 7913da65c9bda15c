"""HTTP plumbing of the Nexus client: send, translate errors, retry transient failures.

Retry layer: this is the only place that retries Nexus requests (tenacity): connect
errors, timeouts, 5xx and 429 with ``Retry-After``, jittered exponential backoff,
``Retry-After`` honoured, at most ``NexusSettings.max_retries`` retries. Every other answer
becomes a typed error of `nexus_bedrock_tasks.exceptions` at once.

Writes (POST, PATCH) go through `transport.ThreadConnections` when it applies, everything
else through `httpx.Client`; both give an `Answer` and the same errors.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

from nexus_bedrock_tasks.backoff import jittered_exponential
from nexus_bedrock_tasks.exceptions import (
    NexusAuthError,
    NexusBedrockError,
    NexusError,
    NexusNotFoundError,
    NexusQuotaError,
    NexusValidationError,
)
from nexus_bedrock_tasks.nexus.redact import Redactor
from nexus_bedrock_tasks.nexus.transport import (
    TRANSPORT_ERRORS,
    UNSENT_ERRORS,
    Answer,
    ThreadConnections,
    lean_path_applies,
)
from nexus_bedrock_tasks.settings import NexusSettings

logger = logging.getLogger(__name__)

# A server asking for a longer pause than this is treated as down for now: the exporter
# keeps the data spooled and comes back later instead of parking a thread for minutes.
MAX_RETRY_AFTER_S = 60.0
# These failures prove the request was not processed, so re-sending cannot duplicate.
_UNSENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, *UNSENT_ERRORS)
_UNSTORED_STATUSES = frozenset({429, 502, 503, 504})

T = TypeVar("T")


class NexusUnavailableError(NexusBedrockError):
    """Nexus stayed unreachable or kept failing transiently after the client's retries.

    Attributes:
        status_code: the last HTTP status, or None when no answer came at all.
        message: what went wrong last.
        maybe_sent: a POST may have been stored although its answer was lost; look it up
            before posting it again.
        retry_after: seconds the server asked to wait, when it said.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        maybe_sent: bool = False,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"Nexus unavailable: {message}")
        self.message = message
        self.status_code = status_code
        self.maybe_sent = maybe_sent
        self.retry_after = retry_after


class TransientError(Exception):
    """One failed attempt that a retry may fix; never leaves `NexusWire.retry`.

    Attributes:
        sent: the request may have been processed (its answer was lost).
    """

    def __init__(
        self, message: str, *, status_code: int | None, retry_after: float | None, sent: bool
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.sent = sent


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError) and (
        exc.retry_after is None or exc.retry_after <= MAX_RETRY_AFTER_S
    )


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class NexusWire:
    """The connections to Nexus, with error translation and retries.

    Args:
        settings: timeouts and the retry bound.
        base_url: the service root.
        api_key: the bearer key, or None to send none.
        redactor: cleans server messages before they go into errors.
        transport: an httpx transport (tests pass `httpx.MockTransport`).
        sleep: how the retry loop waits (tests pass a recorder, so nothing sleeps).
    """

    def __init__(
        self,
        settings: NexusSettings,
        base_url: str,
        api_key: str | None,
        redactor: Redactor,
        *,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.settings = settings
        self.redactor = redactor
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        timeout = httpx.Timeout(settings.read_timeout_s, connect=settings.connect_timeout_s)
        # Plain http (the local Nexus) never uses TLS: skip loading the CA bundle (~25 ms
        # per process). Redirects are not followed, so no https URL is reached. https
        # loads it once, for both paths: httpx's verified default (SSL_CERT_FILE honoured).
        ssl_context = (
            httpx.create_ssl_context(verify=True) if urlsplit(base_url).scheme == "https" else None
        )
        self._http = httpx.Client(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            transport=transport,
            verify=ssl_context if ssl_context is not None else False,
        )
        self._writes = (
            ThreadConnections(base_url, headers, timeout, ssl_context)
            if transport is None and lean_path_applies(base_url)
            else None
        )
        self._sleep = sleep if sleep is not None else time.sleep
        self._backoff = jittered_exponential(multiplier=0.25, max=8.0)

    def retry(self, attempt: Callable[[], T]) -> T:
        """Run `attempt` until it stops raising `TransientError` or the bound is reached.

        Raises:
            NexusUnavailableError: the last attempt failed transiently.
        """
        # Nearly every request succeeds at once: building tenacity's machinery for it
        # would cost more CPU than the request. The first failure hands over to tenacity,
        # which counts it as its own first attempt, so waits and bounds are unchanged.
        try:
            return attempt()
        except TransientError as exc:
            first: TransientError | None = exc

        def replay_then_attempt() -> T:
            nonlocal first
            if first is not None:
                failed, first = first, None
                raise failed
            return attempt()

        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            stop=stop_after_attempt(self.settings.max_retries + 1),
            wait=self._wait,
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        try:
            return retrying(replay_then_attempt)
        except TransientError as exc:
            raise NexusUnavailableError(
                exc.message, status_code=exc.status_code, retry_after=exc.retry_after
            ) from exc

    def _wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, TransientError) and exc.retry_after is not None:
            return exc.retry_after
        return float(self._backoff(state))

    def _log_retry(self, state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        logger.debug("Nexus attempt %d failed (%s); retrying", state.attempt_number, exc)

    def send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        params: dict[str, str] | None = None,
    ) -> Answer:
        """One attempt; a success, or `TransientError`, or a typed `NexusError`."""
        content = None
        headers = None
        if body is not None:
            # default=str: metadata may hold datetimes or other non-JSON values.
            content = json.dumps(body, default=str, ensure_ascii=False).encode()
            headers = {"Content-Type": "application/json"}
        try:
            if content is not None and params is None and self._writes is not None:
                response = self._writes.request(method, path, content)
            else:
                response = Answer.of(
                    self._http.request(
                        method, path, content=content, params=params, headers=headers
                    )
                )
        except (httpx.TransportError, *TRANSPORT_ERRORS) as exc:
            raise TransientError(
                f"{method} {path}: {type(exc).__name__}: {exc}",
                status_code=None,
                retry_after=None,
                sent=not isinstance(exc, _UNSENT_ERRORS),
            ) from exc
        status = response.status_code
        retry_after = parse_retry_after(response.header("Retry-After"))
        if status >= 500 or (status == 429 and retry_after is not None):
            raise TransientError(
                f"{method} {path}: {status} {self._message(response)}",
                status_code=status,
                retry_after=retry_after,
                sent=status not in _UNSTORED_STATUSES,
            )
        if response.is_error:
            raise self._error(response)
        return response

    def _error(self, response: Answer) -> NexusError:
        status = response.status_code
        message = self._message(response)
        body = _json_or_none(response)
        if status in (400, 413, 422):
            fields = body.get("fields") if isinstance(body, dict) else None
            clean = (
                {str(k): self.redactor.redact(str(v)) for k, v in fields.items()}
                if isinstance(fields, dict)
                else {}
            )
            return NexusValidationError(status, message, clean)
        is_plan_limit = "plan" in message.lower() or (
            isinstance(body, dict) and "upgrade_url" in body
        )
        if status == 429 or (status == 403 and is_plan_limit):
            return NexusQuotaError(status, message)
        if status in (401, 403):
            return NexusAuthError(status, message)
        if status == 404:
            return NexusNotFoundError(status, message)
        return NexusError(status, message)

    def _message(self, response: Answer) -> str:
        body = _json_or_none(response)
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            text: str = body["error"]
        else:
            text = response.text[:200] or response.reason_phrase
        return self.redactor.redact(text)

    def close(self) -> None:
        """Close every connection."""
        self._http.close()
        if self._writes is not None:
            self._writes.close()


def id_from(response: Answer, key: str) -> str:
    """The id under `key` of a JSON answer (``trace_id``, ``span_id``)."""
    body = _json_or_none(response)
    value = body.get(key) if isinstance(body, dict) else None
    if not isinstance(value, str) or not value:
        raise NexusError(response.status_code, f"answer without {key}: {response.text[:200]}")
    return value


def json_of(response: Answer) -> Any:
    """The JSON body of an answer, or `NexusError` when it is not JSON."""
    try:
        return response.json()
    except ValueError as exc:
        raise NexusError(response.status_code, "answer is not JSON") from exc


def _json_or_none(response: Answer) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
