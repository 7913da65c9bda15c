"""Pure invocation pieces: input checks, resume sessionState, ledger, retry layer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from nexus_bedrock_tasks.bedrock.client import call_with_retry, is_transient
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.invocation import (
    ToolOutcome,
    resume_session_state,
    validate_invocation,
)
from nexus_bedrock_tasks.ledger import ToolLedger, call_key
from nexus_bedrock_tasks.settings import BedrockTasksSettings


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"agent_id": "bad id!"}, "agent_id"),
        ({"agent_alias_id": "TOO-LONG-ALIAS"}, "agent_alias_id"),
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "x" * 25_001}, "at most 25,000"),
        ({"session_id": "has space"}, "session_id"),
    ],
)
def test_validation_names_the_field(kwargs: dict[str, Any], field: str) -> None:
    base = {
        "agent_id": "DEMO000001",
        "agent_alias_id": "TSTALIASID",
        "prompt": "hi",
        "session_id": None,
    }
    with pytest.raises(ConfigError, match=field):
        validate_invocation(**{**base, **kwargs})


def test_valid_input_passes() -> None:
    validate_invocation(
        agent_id="DEMO000001", agent_alias_id="TSTALIASID", prompt="x" * 25_000, session_id="s-1"
    )


def test_resume_state_orders_results_and_marks_states() -> None:
    ok = ToolOutcome(
        index=1, key="k1", action_group="weather", function="get_forecast", body="sunny"
    )
    failed = ToolOutcome(index=0, key="k0", action_group="weather", function="x", body="boom",
                         response_state="FAILURE", error="boom")  # fmt: skip
    api = ToolOutcome(index=2, key="k2", action_group="b", api_path="/book", http_method="POST",
                      body="denied", confirmation_state="DENY")  # fmt: skip
    state = resume_session_state("inv-9", [ok, failed, api], {"user": "ann"})
    assert state["invocationId"] == "inv-9"
    assert state["sessionAttributes"] == {"user": "ann"}
    results = state["returnControlInvocationResults"]
    assert results[0]["functionResult"]["responseState"] == "FAILURE"
    assert results[1]["functionResult"] == {
        "actionGroup": "weather",
        "function": "get_forecast",
        "responseBody": {"TEXT": {"body": "sunny"}},
    }
    assert results[2]["apiResult"]["confirmationState"] == "DENY"
    assert results[2]["apiResult"]["httpStatusCode"] == 200


def test_ledger_returns_finished_outcomes_only(tmp_path: Path) -> None:
    ledger = ToolLedger(tmp_path / "ledger.sqlite3")
    key = call_key("s", "inv", 0)
    ledger.begin(key)
    assert ledger.get(key) is None and ledger.unfinished() == [key]
    ledger.finish(key, {"body": "done"})
    again = ToolLedger(tmp_path / "ledger.sqlite3")
    stored = again.get(key)
    assert stored is not None and stored.outcome == {"body": "done"}
    assert again.unfinished() == []
    ledger.close()
    again.close()


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "InvokeAgent",
    )


def test_retry_layer_retries_only_transient_errors() -> None:
    settings = BedrockTasksSettings(aws_max_attempts=4)
    waits: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 3:
            raise _client_error("ThrottlingException", 429)
        return "ok"

    result, retries = call_with_retry(flaky, settings, sleep=waits.append)
    assert (result, retries, calls["n"], len(waits)) == ("ok", 2, 3, 2)

    def invalid() -> str:
        calls["n"] += 1
        raise _client_error("ValidationException", 400)

    calls["n"] = 0
    with pytest.raises(ClientError):
        call_with_retry(invalid, settings, sleep=waits.append)
    assert calls["n"] == 1

    def down() -> str:
        calls["n"] += 1
        raise _client_error("InternalServerException", 500)

    calls["n"] = 0
    with pytest.raises(ClientError):
        call_with_retry(down, settings, sleep=waits.append)
    assert calls["n"] == 4
    assert is_transient(EndpointConnectionError(endpoint_url="http://x"))
    assert not is_transient(ValueError())
