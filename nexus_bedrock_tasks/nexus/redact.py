"""Keep secrets out of everything that leaves the process: spans, the outbox, logs.

Pure functions, no I/O, so the flows can reuse them for their own log lines.

Example:
    >>> redactor = Redactor(secrets=["hunter2-long-secret"])
    >>> redactor.redact("key nxs_abcdef0123456789 and hunter2-long-secret")
    'key [REDACTED] and [REDACTED]'
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from nexus_bedrock_tasks.exceptions import ConfigError

REDACTED = "[REDACTED]"

# Values under these dict keys are secrets whatever they look like. Compared after
# lowercasing and dropping `_`/`-`, so `aws_secret_access_key` and `SecretAccessKey` both hit.
SECRET_KEYS = frozenset(
    {
        "apikey",
        "xapikey",
        "authorization",
        "password",
        "secret",
        "clientsecret",
        "secretaccesskey",
        "awssecretaccesskey",
        "sessiontoken",
        "awssessiontoken",
        "accesstoken",
        "refreshtoken",
    }
)

_Replacement = Callable[["re.Match[str]"], str]


def _whole(_match: re.Match[str]) -> str:
    return REDACTED


def _keep_prefix(match: re.Match[str]) -> str:
    # Group 1 is the context ("aws_secret_access_key = "); only the value after it goes.
    return f"{match.group(1)}{REDACTED}"


_BUILTIN: tuple[tuple[re.Pattern[str], _Replacement], ...] = (
    (re.compile(r"\bnxs_[A-Za-z0-9_\-]{6,}"), _whole),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), _whole),
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9\-._~+/]+=*"), _keep_prefix),
    (
        re.compile(
            r"(?i)\b((?:aws[_-]?)?(?:secret[_-]?access[_-]?key|session[_-]?token)"
            r"[\"']?\s*[:=]\s*[\"']?)[A-Za-z0-9/+=]{16,}"
        ),
        _keep_prefix,
    ),
    (
        re.compile(
            r"(?i)\b((?:x-)?(?:api[_-]?key|authorization)[\"']?\s*[:=]\s*[\"']?"
            r"(?:(?:basic|token|digest)\s+)?)"
            r"(?!bearer\b|\[REDACTED\])[^\s\"',;}]{4,}"
        ),
        _keep_prefix,
    ),
)


# Every built-in rule needs one of these words; text without any skips the rules (most
# text: a model call's JSON has "session_id" and "input_tokens", which are no trigger).
_BUILTIN_TRIGGER = re.compile(
    r"nxs_|AKIA|ASIA|(?i:bearer|secret|session[_-]?token|api.?key|authoriz)"
)
_API_KEY_LOWER = re.compile(r"api.?key")
# The only non-ASCII characters `re.IGNORECASE` matches to ASCII letters (checked over
# all of Unicode by tests/nexus/test_redact.py).
_FOLDED_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")


def _has_trigger(text: str) -> bool:
    """Exactly ``_BUILTIN_TRIGGER.search(text) is not None``, for a fraction of the CPU.

    The regex's case-insensitive alternation is tried at every character; substring tests
    on the lowered text are not (about 10x less CPU on model-call JSON). The regex also
    takes four non-ASCII characters for ASCII letters (``İ ı ſ K``): text with any of them
    keeps the regex.
    """
    if not text.isascii() and any(char in text for char in _FOLDED_TO_ASCII):
        return _BUILTIN_TRIGGER.search(text) is not None
    if "nxs_" in text or "AKIA" in text or "ASIA" in text:
        return True
    low = text.lower()
    if "bearer" in low or "secret" in low or "authoriz" in low:
        return True
    if "sessiontoken" in low or "session_token" in low or "session-token" in low:
        return True
    return "key" in low and "api" in low and _API_KEY_LOWER.search(low) is not None


class Redactor:
    """Replaces secrets in text and JSON values by ``[REDACTED]``.

    Built-in rules: Nexus keys (``nxs_...``), AWS access key ids (``AKIA``/``ASIA``), AWS
    secret keys and session tokens after their names, bearer tokens, ``api_key=``/
    ``Authorization:`` values. ``patterns`` adds regexes whose whole match goes; ``secrets``
    adds literal strings (the configured API key, whatever its shape).

    Args:
        patterns: extra regular expressions (e.g. ``NexusSettings.redact_patterns``).
        secrets: literal secret values to remove wherever they appear.

    Raises:
        ConfigError: a pattern is not a valid regular expression.
    """

    def __init__(self, patterns: Iterable[str] = (), secrets: Iterable[str] = ()) -> None:
        rules: list[tuple[re.Pattern[str], _Replacement]] = []
        for pattern in patterns:
            try:
                rules.append((re.compile(pattern), _whole))
            except re.error as exc:
                raise ConfigError(
                    f"NEXUS_REDACT_PATTERNS: {pattern!r} is not a valid regex ({exc})"
                ) from exc
        literal = [re.escape(s) for s in secrets if s]
        if literal:
            rules.append((re.compile("|".join(literal)), _whole))
        self._extra_rules = tuple(rules)

    def redact(self, text: str) -> str:
        """`text` with every secret replaced by ``[REDACTED]``."""
        if _has_trigger(text):
            for pattern, replacement in _BUILTIN:
                text = pattern.sub(replacement, text)
        for pattern, replacement in self._extra_rules:
            text = pattern.sub(replacement, text)
        return text

    def redact_value(self, value: Any) -> Any:
        """A copy of a JSON-like value with secret strings and secret-named keys redacted."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {
                key: (
                    REDACTED
                    if _is_secret_key(key) and item is not None
                    else self.redact_value(item)
                )
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            return [self.redact_value(item) for item in value]
        return value


_SECRET_KEY_CACHE: dict[str, bool] = {}


def _is_secret_key(key: object) -> bool:
    if not isinstance(key, str):
        return False
    known = _SECRET_KEY_CACHE.get(key)
    if known is None:
        known = key.lower().replace("_", "").replace("-", "") in SECRET_KEYS
        if len(_SECRET_KEY_CACHE) < 4096:  # keys repeat; odd ones must not grow it forever
            _SECRET_KEY_CACHE[key] = known
    return known


def truncate(text: str, max_chars: int, *, original_length: int | None = None) -> str:
    """Cut `text` to at most `max_chars` characters, ending with a visible marker.

    Args:
        text: the text to cut.
        max_chars: the limit on the result's length.
        original_length: the length to report when `text` is already a cut of a longer
            text (then the marker is added even if `text` fits).
    """
    if original_length is None:
        if len(text) <= max_chars:
            return text
        original_length = len(text)
    marker = f"…[truncated, {original_length} chars]"
    return text[: max(0, max_chars - len(marker))] + marker


def payload_text(value: Any, redactor: Redactor, max_chars: int) -> str | None:
    """Span input/output/error as Nexus should get it: a redacted, truncated string.

    A `str` is kept as is, anything else becomes JSON (``default=str`` for the odd object).
    Very long values are cut before redaction, to bound the regex work; the margin keeps
    a secret split at that cut far beyond what truncation keeps.

    Args:
        value: the value to send, or None for none.
        redactor: the secret filter.
        max_chars: the size limit of the result.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(redactor.redact_value(value), default=str, ensure_ascii=False)
    cut = text[: 2 * max_chars + 1024]
    redacted = redactor.redact(cut)
    return truncate(
        redacted, max_chars, original_length=None if len(cut) == len(text) else len(text)
    )
