"""The hosted service's request rules, as pure functions.

Messages, field names and quirks follow the service's route handlers (a TypeScript app):
an empty string counts as missing, times are checked by pattern only (not as calendar
dates), a span's `error` is stored as JavaScript's `String(value)`, and `limit` is read
like `parseInt`. Keeping the quirks means a client that passes here passes there.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Final, get_args

from nexus_bedrock_tasks.semconv import SpanStatus, TraceStatus

TRACE_STATUSES: Final[tuple[str, ...]] = get_args(TraceStatus)
SPAN_STATUSES: Final[tuple[str, ...]] = get_args(SpanStatus)
# GET /api/v1/traces?status= takes outcome groups, not stored statuses.
LIST_STATUS_GROUPS: Final[dict[str, tuple[str, ...]]] = {
    "ok": ("success",),
    "error": ("error", "timeout"),
}
DEFAULT_LIST_LIMIT: Final = 50
MAX_LIST_LIMIT: Final = 200

REQUIRED: Final = "Required, must be a string"
ISO_REQUIRED: Final = "Must be ISO 8601 format (e.g. 2026-04-05T12:00:00Z)"
ISO_OPTIONAL: Final = "Must be ISO 8601 format if provided"
VALIDATION_FAILED: Final = "Validation failed"
INVALID_QUERY: Final = "Invalid query parameters"

_ISO_8601 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|([+-])(\d{2}):(\d{2}))",
    re.ASCII,
)
_LEADING_INT = re.compile(r"\s*([+-]?\d+)", re.ASCII)

Body = Mapping[str, object]


class BodyError(ValueError):
    """The request body is not a JSON object; `str(exc)` is the service's message."""


def is_iso8601(value: object) -> bool:
    """Whether `value` is a string the service accepts as a time."""
    return isinstance(value, str) and _ISO_8601.fullmatch(value) is not None


def parse_iso8601(value: str) -> datetime | None:
    """A time the service accepted, as an aware datetime; `None` if it is no calendar time.

    The pattern check lets `2026-13-45T99:00:00Z` through, as the service does; such a
    value cannot be placed on a timeline.
    """
    match = _ISO_8601.fullmatch(value)
    if match is None:
        return None
    year, month, day, hour, minute, second = (int(part) for part in match.groups()[:6])
    fraction, _zone, sign, offset_h, offset_m = match.groups()[6:]
    micros = int((fraction or "0")[:6].ljust(6, "0"))
    offset = timedelta(0)
    if sign:
        offset = timedelta(hours=int(offset_h), minutes=int(offset_m))
        offset = -offset if sign == "-" else offset
    try:
        return datetime(year, month, day, hour, minute, second, micros, timezone(offset))
    except ValueError:
        return None


def parse_body(raw: bytes) -> Body:
    """Decode a request body the way the service does.

    Raises:
        BodyError: not JSON, or JSON that is not an object.
    """
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise BodyError("Invalid JSON body") from exc
    if isinstance(body, dict):
        return body
    # A JSON array is an object to the service's check; its named fields are all absent.
    if isinstance(body, list):
        return {}
    raise BodyError("Body must be a JSON object")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _nonempty_string(value: object) -> bool:
    return isinstance(value, str) and value != ""


def _check_status(body: Body, allowed: tuple[str, ...], errors: dict[str, str]) -> None:
    status = body.get("status")
    if not _nonempty_string(status):
        errors["status"] = REQUIRED
    elif status not in allowed:
        errors["status"] = f"Must be one of: {', '.join(allowed)}"


def _check_times(body: Body, errors: dict[str, str]) -> None:
    started_at = body.get("started_at")
    if not _nonempty_string(started_at):
        errors["started_at"] = REQUIRED
    elif not is_iso8601(started_at):
        errors["started_at"] = ISO_REQUIRED
    ended_at = body.get("ended_at")
    if ended_at is not None and not is_iso8601(ended_at):
        errors["ended_at"] = ISO_OPTIONAL


def trace_errors(body: Body) -> dict[str, str]:
    """Field errors of a `POST /api/v1/traces` body (empty when valid)."""
    errors: dict[str, str] = {}
    if not _nonempty_string(body.get("agent_id")):
        errors["agent_id"] = REQUIRED
    if not _nonempty_string(body.get("name")):
        errors["name"] = REQUIRED
    _check_status(body, TRACE_STATUSES, errors)
    _check_times(body, errors)
    return errors


def patch_errors(body: Body) -> dict[str, str]:
    """Field errors of a `PATCH /api/v1/traces/:id` body (metadata is not looked at)."""
    errors: dict[str, str] = {}
    if "status" in body and body["status"] not in TRACE_STATUSES:
        errors["status"] = f"Must be one of: {', '.join(TRACE_STATUSES)}"
    ended_at = body.get("ended_at")
    if ended_at is not None and not is_iso8601(ended_at):
        errors["ended_at"] = ISO_OPTIONAL
    return errors


def span_errors(body: Body) -> dict[str, str]:
    """Field errors of a `POST /api/v1/traces/:id/spans` body (empty when valid)."""
    errors: dict[str, str] = {}
    if not _nonempty_string(body.get("name")):
        errors["name"] = REQUIRED
    _check_status(body, SPAN_STATUSES, errors)
    _check_times(body, errors)
    parent = body.get("parent_span_id")
    if parent is not None and not isinstance(parent, str):
        errors["parent_span_id"] = "Must be a string if provided"
    return errors


def list_query_errors(query: Mapping[str, str]) -> dict[str, str]:
    """Errors of `GET /api/v1/traces` query parameters (empty when valid)."""
    errors: dict[str, str] = {}
    status = query.get("status")
    if status is not None and status not in LIST_STATUS_GROUPS:
        errors["status"] = f"Must be one of: {', '.join(LIST_STATUS_GROUPS)}"
    for key in ("since", "until"):
        value = query.get(key)
        if value is not None and not is_iso8601(value):
            errors[key] = ISO_REQUIRED
    limit = js_parse_int(query.get("limit", str(DEFAULT_LIST_LIMIT)))
    if limit is None or not 1 <= limit <= MAX_LIST_LIMIT:
        errors["limit"] = f"Must be an integer between 1 and {MAX_LIST_LIMIT}"
    return errors


def list_limit(query: Mapping[str, str]) -> int:
    """The page size asked for (call once `list_query_errors` found nothing wrong)."""
    return js_parse_int(query.get("limit", "")) or DEFAULT_LIST_LIMIT


def js_parse_int(text: str) -> int | None:
    """JavaScript's `parseInt(text, 10)`: leading digits count, `None` stands for NaN."""
    match = _LEADING_INT.match(text)
    return int(match.group(1)) if match else None


def js_string(value: object) -> str:
    """JavaScript's `String(value)` for a decoded JSON value."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return ",".join("" if item is None else js_string(item) for item in value)
    if isinstance(value, dict):
        return "[object Object]"
    return str(value)


def to_json_text(value: object) -> str:
    """The stored form of `input`, `output` and `metadata` (`JSON.stringify`)."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def from_json_text(text: str | None) -> object:
    """Read back a stored JSON column; empty or missing is `None`, as the service does."""
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text
