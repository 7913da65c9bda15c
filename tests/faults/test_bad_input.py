"""Bad input: one line naming the field and the fix, exit code 2, nothing half-written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nexus_bedrock_tasks.cli import app
from tests.faults.conftest import Scenario
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS

pytestmark = PREFECT_SOCKET_WARNINGS
MakeScenario = Callable[..., Scenario]
AGENT = ["--agent-id", "DEMO000001", "--alias-id", "TSTALIASID"]
NO_AWS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
          "AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME")  # fmt: skip


def write_inputs(folder: Path) -> None:
    (folder / "wrong_signature.py").write_text(
        "from nexus_bedrock_tasks import tool\n\n"
        "@tool(action_group='weather', function='get_forecast')\n"
        "def get_forecast(city):\n    return city\n"
    )
    (folder / "cases.jsonl").write_text(
        '{"id": "ok", "prompt": "What should I pack?"}\n{"id": "broken", "prompt": \n'
    )
    (folder / "agents.yaml").write_text("agents:\n  - id: 'bad id!'\n    name: x\n")


CASES = [
    ("empty prompt", ["invoke", *AGENT, "  "], {}, ("prompt is empty", "give the text")),
    (
        "prompt over 25,000 characters",
        ["invoke", *AGENT, "x" * 25_001],
        {},
        ("prompt is 25,001 characters", "shorten it"),
    ),
    (
        "malformed agent id",
        ["invoke", "--agent-id", "agent-1!", "--alias-id", "TSTALIASID", "hi"],
        {},
        ("agent_id 'agent-1!'", "10-character agent id"),
    ),
    (
        "malformed alias id",
        ["invoke", "--agent-id", "DEMO000001", "--alias-id", "draft alias", "hi"],
        {},
        ("agent_alias_id 'draft alias'", "TSTALIASID"),
    ),
    (
        "unknown --tools module",
        ["invoke", *AGENT, "--tools", "no_such_tools_mod", "hi"],
        {},
        ("--tools no_such_tools_mod: module not found", "importable module"),
    ),
    (
        "tool with a wrong signature",
        ["invoke", *AGENT, "--tools", "{dir}/wrong_signature.py", "hi"],
        {},
        ("parameter 'city' needs a type annotation", "str, int"),
    ),
    (
        "malformed dataset line",
        ["eval", "{dir}/cases.jsonl", *AGENT],
        {},
        ("cases.jsonl line 2: not valid JSON", "column"),
    ),
    (
        "invalid agents YAML",
        ["local", "bedrock", "--port", "0", "--agents", "{dir}/agents.yaml"],
        {},
        ("field agents.0.id", "compare with deployments/agents.yaml"),
    ),
    (
        "bad NEXUS_BASE_URL",
        ["invoke", *AGENT, "hi"],
        {"NEXUS_BASE_URL": "nexus.example.com"},
        ("NEXUS_BASE_URL 'nexus.example.com' is not an http(s) URL", "set it like"),
    ),
    (
        "missing AWS credentials",
        ["invoke", *AGENT, "hi"],
        {
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
            "AWS_CONFIG_FILE": "/nonexistent",
        },
        ("no AWS credentials found", "`make demo`"),
    ),  # fmt: skip
]


@pytest.mark.parametrize(
    ("name", "args", "env", "expected"), CASES, ids=[case[0] for case in CASES]
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    scenario_factory: MakeScenario,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    args: list[str],
    env: dict[str, str],
    expected: tuple[str, str],
) -> None:
    scenario = scenario_factory(
        "Bad input",
        name,
        f"`nexus-bedrock {' '.join(a if len(a) < 40 else a[:12] + '…' for a in args[:6])}"
        f"{' …' if len(args) > 6 else ''}`"
        + (f" with {', '.join(f'{k}={v}' for k, v in env.items())}" if env else "")
        + (" and no AWS credentials anywhere" if name == "missing AWS credentials" else "")
        + f"; the error must contain {expected[0]!r} and the fix {expected[1]!r}.",
    )
    write_inputs(scenario.tmp)
    monkeypatch.setenv("NEXUS_BASE_URL", scenario.nexus.url)
    monkeypatch.setenv("NEXUS_API_KEY", scenario.nexus.api_key)
    if name == "missing AWS credentials":
        for key in NO_AWS:
            monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    before = {p for p in scenario.tmp.rglob("*")}
    argv = [a.replace("{dir}", str(scenario.tmp)) for a in args]
    result = CliRunner().invoke(app, argv)
    scenario.texts.append(("output", result.output + result.stderr))
    lines = result.stderr.strip().splitlines()
    written = sorted(str(p) for p in set(scenario.tmp.rglob("*")) - before)
    one_line = len(lines) == 1 and lines[0].startswith("error: ")
    names_it = one_line and all(part in lines[0] for part in expected)
    nothing = not written and not scenario.traces()
    scenario.record(
        runs=1,
        outcome=f"exit {result.exit_code}; "
        + (f"`{lines[0][:110]}`" if one_line else f"{len(lines)} stderr lines")
        + ("" if nothing else f"; wrote {written}"),
        outcome_ok=result.exit_code == 2 and names_it and nothing,
        tools_expected=0,
    )


@pytest.mark.parametrize(
    ("argv", "variable", "value", "message"),
    [
        (["invoke", *AGENT, "hi"], "NEXUS_DELIVERY_DELAY_MS", "-5", "greater than or equal to 0"),
        (["outbox", "flush"], "NEXUS_BEDROCK_FLUSH_TIMEOUT_S", "soon", "a valid number"),
    ],
    ids=["NEXUS_ variable, invoke", "NEXUS_BEDROCK_ variable, outbox flush"],
)
def test_bad_settings_variable_is_one_line_naming_it_exit_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    argv: list[str],
    variable: str,
    value: str,
    message: str,
) -> None:
    from nexus_bedrock_tasks.cli import main

    monkeypatch.setenv("NEXUS_BEDROCK_OUTBOX", str(tmp_path / "outbox.sqlite3"))
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, "test")  # past the credentials check, never used
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME", "http://127.0.0.1:9")
    monkeypatch.setenv(variable, value)
    monkeypatch.setattr("sys.argv", ["nexus-bedrock", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: {variable}={value!r}: ")
    assert message in lines[0] and "fix or unset the variable" in lines[0]


def test_settings_problem_is_only_about_the_settings_models() -> None:
    from pydantic import BaseModel, ValidationError

    from nexus_bedrock_tasks.settings import settings_problem

    class Other(BaseModel):
        n: int

    with pytest.raises(ValidationError) as caught:
        Other(n="x")  # type: ignore[arg-type]
    assert settings_problem(caught.value) is None
