"""Secrets never leave the process; payloads stay within their size."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.nexus.redact import REDACTED, Redactor, payload_text, truncate

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("key nxs_live_4f9a8b7c6d5e", "nxs_live_4f9a8b7c6d5e"),
        ("id AKIAIOSFODNN7EXAMPLE ok", "AKIAIOSFODNN7EXAMPLE"),
        ("temp ASIAY34FZKBOKMUTVV7A", "ASIAY34FZKBOKMUTVV7A"),
        (f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
        (f'{{"SecretAccessKey": "{AWS_SECRET}"}}', AWS_SECRET),
        (f"AWS_SESSION_TOKEN={AWS_SECRET}xyz", AWS_SECRET),
        ("Authorization: Bearer eyJhbGciOi.payload.sig", "eyJhbGciOi.payload.sig"),
        ("authorization: Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA=="),
        ("x-api-key: 7f3e9a1b2c", "7f3e9a1b2c"),
        ("call(api_key='sk-abcdef123456')", "sk-abcdef123456"),
    ],
)
def test_builtin_rules(text: str, secret: str) -> None:
    redacted = Redactor().redact(text)
    assert secret not in redacted and REDACTED in redacted


def test_context_words_survive() -> None:
    assert Redactor().redact(f"aws_secret_access_key={AWS_SECRET}") == (
        f"aws_secret_access_key={REDACTED}"
    )
    assert Redactor().redact("Authorization: Bearer abc.def") == f"Authorization: Bearer {REDACTED}"


def test_configured_patterns_and_literal_secrets() -> None:
    redactor = Redactor([r"acct-\d{6}"], secrets=["hunter2-is-my-password", ""])
    text = redactor.redact("acct-123456 logged in with hunter2-is-my-password")
    assert text == f"{REDACTED} logged in with {REDACTED}"


def test_invalid_pattern_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="NEXUS_REDACT_PATTERNS"):
        Redactor(["(unclosed"])


def test_secret_named_keys_are_redacted_but_token_counts_are_not() -> None:
    value = {
        "api_key": "plain",
        "AWS-Secret-Access-Key": "plain",
        "password": None,
        "input_tokens": 12,
        "nested": [{"Authorization": "x"}, "AKIAIOSFODNN7EXAMPLE"],
    }
    assert Redactor().redact_value(value) == {
        "api_key": REDACTED,
        "AWS-Secret-Access-Key": REDACTED,
        "password": None,
        "input_tokens": 12,
        "nested": [{"Authorization": REDACTED}, REDACTED],
    }


def test_payload_text_serializes_and_keeps_strings() -> None:
    redactor = Redactor()
    assert payload_text(None, redactor, 300) is None
    assert payload_text("as is", redactor, 300) == "as is"
    assert payload_text({"a": [1, "é"]}, redactor, 300) == '{"a": [1, "é"]}'
    assert payload_text({"at": object}, redactor, 300) == '{"at": "<class \'object\'>"}'


def test_truncation_is_visible_and_bounded() -> None:
    text = payload_text("x" * 100_000, Redactor(), 500)
    assert text is not None and len(text) == 500
    assert text.endswith("…[truncated, 100000 chars]")
    assert truncate("short", 500) == "short"


def test_secret_at_the_cut_does_not_leak() -> None:
    text = "a" * 290 + " AKIAIOSFODNN7EXAMPLE " + "b" * 1000
    out = payload_text(text, Redactor(), 300)
    assert out is not None and "AKIA" not in out


@given(
    before=st.text(max_size=400),
    after=st.text(max_size=400),
    limit=st.integers(min_value=256, max_value=1000),
)
def test_embedded_keys_never_survive(before: str, after: str, limit: int) -> None:
    out = payload_text(
        f"{before} AKIAIOSFODNN7EXAMPLE nxs_abcdef0123456789 {after}", Redactor(), limit
    )
    assert out is not None and len(out) <= limit
    assert "AKIAIOSFODNN7EXAMPLE" not in out and "nxs_abcdef0123456789" not in out


_FRAGMENTS = [
    "nxs_live_4f9a8b7c6d5e",
    "AKIAIOSFODNN7EXAMPLE",
    "Bearer abc.def",
    "aws_secret_access_key=",
    "SESSION-TOKEN: ",
    "session_token=",
    "sessionToken",
    "x-api-key: ",
    "API_KEY=",
    "authorization: ",
    AWS_SECRET,
    "session_id",
    "input_tokens",
    '"',
    " ",
    "=",
    ":",
    "tok3n-value-1234567890",
]


@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map("".join))
def test_the_quick_check_never_skips_a_rule_that_would_fire(text: str) -> None:
    from nexus_bedrock_tasks.nexus.redact import _BUILTIN

    every_rule = text
    for pattern, replacement in _BUILTIN:
        every_rule = pattern.sub(replacement, every_rule)
    assert Redactor().redact(text) == every_rule


def test_model_call_json_is_left_alone() -> None:
    text = '{"session_id": "s-1", "input_tokens": 12, "output_tokens": 3, "text": "hi"}'
    assert Redactor().redact(text) == text


_TRIGGER_TEXT = st.lists(
    st.sampled_from(_FRAGMENTS)
    | st.sampled_from(["\u0130", "\u0131", "\u017f", "\u212a", "é", "€", "API", "kEy", "\n"])
    | st.text(max_size=5),
    max_size=8,
).map("".join)


@example("ſecret")
@example("BEARER é")
@example("api\nkey é")
@example("Api-KEY")
@example("SESSION-token")
@given(_TRIGGER_TEXT)
def test_trigger_test_agrees_with_the_trigger_regex(text: str) -> None:
    from nexus_bedrock_tasks.nexus.redact import _BUILTIN_TRIGGER, _has_trigger

    assert _has_trigger(text) == (_BUILTIN_TRIGGER.search(text) is not None)


def test_only_four_non_ascii_characters_match_ascii_letters_ignoring_case() -> None:
    """What `_has_trigger` relies on to skip the regex for other non-ASCII text."""
    import re
    import sys

    from nexus_bedrock_tasks.nexus.redact import _FOLDED_TO_ASCII

    letter = re.compile("(?i)[a-z]")
    found = [chr(c) for c in range(128, sys.maxunicode + 1) if letter.fullmatch(chr(c))]
    assert tuple(found) == _FOLDED_TO_ASCII
