"""Pure parts of the emulator: config validation, planning, retrieval, tokens, faults."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from nexus_bedrock_tasks.local.bedrock.config import (
    EmulatorConfig,
    KnowledgeBaseSpec,
    ParameterSpec,
    load_config,
)
from nexus_bedrock_tasks.local.bedrock.errors import AwsError
from nexus_bedrock_tasks.local.bedrock.faults import FaultSpec, faults_from_headers
from nexus_bedrock_tasks.local.bedrock.handlers import convert_currency, resolve_handler
from nexus_bedrock_tasks.local.bedrock.inline import keywords_of
from nexus_bedrock_tasks.local.bedrock.knowledge import KnowledgeBaseIndex
from nexus_bedrock_tasks.local.bedrock.planner import (
    Delegation,
    DirectAnswer,
    FunctionCall,
    KnowledgeLookup,
    extract_parameter,
    plan,
    render,
)
from nexus_bedrock_tasks.local.bedrock.traces import count_tokens
from tests.local_bedrock.emulator_helpers import DEPLOYED_AGENTS, REPO


@pytest.fixture(scope="module")
def config() -> EmulatorConfig:
    return load_config(DEPLOYED_AGENTS)


@pytest.mark.parametrize(("text", "tokens"), [("", 0), ("a", 1), ("abcd", 1), ("abcde", 2)])
def test_token_count_is_ceil_of_chars_over_four(text: str, tokens: int) -> None:
    assert count_tokens(text) == tokens


@pytest.mark.parametrize(
    ("spec", "text", "value"),
    [
        (ParameterSpec(type="integer"), "book 3 nights", "3"),
        (ParameterSpec(type="integer"), "stay for nights=4 please", "4"),
        (ParameterSpec(type="number"), "convert 12.5 USD", "12.5"),
        (ParameterSpec(type="number"), "no numbers here", None),
        (ParameterSpec(type="string", extract=(r"code (\w+)",)), "use code XYZ", "XYZ"),
        (ParameterSpec(type="boolean"), "nights=yes", None),
    ],
)
def test_parameter_extraction(spec: ParameterSpec, text: str, value: str | None) -> None:
    assert extract_parameter("nights", spec, text) == value


def test_routes_follow_the_order_of_the_keywords_in_the_prompt(config: EmulatorConfig) -> None:
    supervisor = config.agent("SUPERV0001", "TSTALIASID")
    assert supervisor is not None
    actions = plan(supervisor, "What to pack, and convert 5 USD to EUR", [])
    assert [type(a) for a in actions] == [Delegation, Delegation]
    assert [a.collaborator.name for a in actions if isinstance(a, Delegation)] == [
        "TravelGuide",
        "CurrencyExpert",
    ]


def test_keyword_match_starts_a_word(config: EmulatorConfig) -> None:
    demo = config.agent("DEMO000001", "TSTALIASID")
    assert demo is not None
    assert isinstance(plan(demo, "Weather in Oslo", [])[0], FunctionCall)
    assert isinstance(plan(demo, "Is it a bellwether state?", [])[0], KnowledgeLookup)


def test_missing_required_parameter_stops_the_plan(config: EmulatorConfig) -> None:
    demo = config.agent("DEMO000001", "TSTALIASID")
    assert demo is not None
    [action] = plan(demo, "weather please", [])
    assert isinstance(action, DirectAnswer)
    assert action.ask_user


def test_render_keeps_unknown_fields() -> None:
    assert render("{city}: {result} {other}", {"city": "Oslo", "result": "snow"}) == (
        "Oslo: snow {other}"
    )


def test_retrieval_is_ranked_deterministic_and_bounded() -> None:
    spec = KnowledgeBaseSpec(id="KB1", path=REPO / "deployments" / "kb" / "travel")
    index = KnowledgeBaseIndex(spec)
    first = index.retrieve("Tokyo cherry blossom season")
    assert first == KnowledgeBaseIndex(spec).retrieve("Tokyo cherry blossom season")
    assert first[0].passage.text.startswith("Cherry blossom season in Tokyo")
    assert first[0].passage.chunk_id == "tokyo.txt#1"
    assert len(first) <= spec.number_of_results
    assert all(0 < item.score <= 1 for item in first)
    assert index.retrieve("the and of") == []


def test_faults_from_headers_and_precedence() -> None:
    header = faults_from_headers({"X-Emulator-Drop-After": "3", "Content-Type": "x"})
    agent = FaultSpec(step_latency_ms=200, drop_after=9)
    merged = agent.overridden_by(header)
    assert (merged.step_latency_ms, merged.drop_after) == (200, 3)
    with pytest.raises(AwsError, match="unknown emulator header"):
        faults_from_headers({"x-emulator-nope": "1"})
    with pytest.raises(AwsError, match="stream_error"):
        faults_from_headers({"x-emulator-stream-error": "fooException"})


def test_handlers_resolve_by_name_or_import_path() -> None:
    assert resolve_handler("convert_currency") is convert_currency
    assert (
        resolve_handler("nexus_bedrock_tasks.local.bedrock.handlers:convert_currency")
        is convert_currency
    )
    for bad in ("nope", "nexus_bedrock_tasks.nope:x", "nexus_bedrock_tasks.local.bedrock:x"):
        with pytest.raises(ValueError):
            resolve_handler(bad)
    with pytest.raises(ValueError, match="unknown currency XYZ"):
        convert_currency({"amount": 1, "from_currency": "XYZ", "to_currency": "EUR"})


def test_inline_keywords_skip_verbs() -> None:
    assert keywords_of("weather", "get_forecast") == ("weather", "forecast")
    assert keywords_of("HotelBooking", "createReservation") == ("hotel", "booking", "reservation")


_AGENT = """
agents:
  - id: A1
    name: a
{extra}
"""


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("    knowledge_bases: [{id: NOKB}]", "unknown knowledge base NOKB"),
        ("    guardrail: nope", "unknown guardrail nope"),
        (
            "    action_groups: [{name: g, executor: LAMBDA, functions: [{name: f}]}]",
            "needs a handler",
        ),
        (
            "    action_groups: [{name: g, functions: [{name: f, handler: fail}]}]",
            "cannot have a handler",
        ),
        (
            "    action_groups: [{name: g, executor: LAMBDA, functions: [{name: f, handler: x}]}]",
            "no built-in handler 'x'",
        ),
        (
            "    action_groups: [{name: g, functions: [{name: f, parameters: "
            "{p: {extract: ['\\d+']}}}]}]",
            "needs a capture group",
        ),
        (
            "    action_groups: [{name: g, functions: [{name: f, then: nope}]}]",
            "then: 'nope' names no tool",
        ),
        (
            "    action_groups: [{name: g, functions: [{name: f, then: h}, {name: h, then: g.f}]}]",
            "then cycle: g.f -> g.h -> g.f",
        ),
        (
            "    action_groups: [{name: g, functions: [{name: f}]},"
            " {name: k, functions: [{name: f}, {name: e, then: f}]}]",
            "then: 'f' is ambiguous",
        ),
        (
            "    action_groups: [{name: g, functions: [{name: f}],"
            " api: [{path: /x, method: GET}]}]",
            "needs functions or api",
        ),
        ("    action_groups: [{name: g}]", "needs functions or api"),
        (
            "    action_groups: [{name: g, api: [{path: /x, method: POST,"
            " parameters: {a: {}}, request_body: {a: {}}}]}]",
            "both parameters and request_body",
        ),
        (
            "    action_groups: [{name: g,"
            " api: [{path: /x, method: GET}, {path: /x, method: GET}]}]",
            "duplicate tool of action group g GET /x",
        ),
        ("    collaborators: [{name: c, agent: A1, keywords: [x]}]", "collaborator cycle"),
        ("    collaborators: [{name: c, agent: ZZ, keywords: [x]}]", "unknown collaborator"),
        ("    surprise: true", "surprise"),
        ("  - id: A1\n    name: again", "duplicate agent"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, extra: str, message: str) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(_AGENT.format(extra=extra))
    with pytest.raises(ValueError, match=message):
        load_config(path)


def test_collaborators_that_return_control_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(
        textwrap.dedent(
            """
            agents:
              - id: BOSS
                name: boss
                collaborators: [{name: helper, agent: HELPER, keywords: [help]}]
              - id: HELPER
                name: helper
                action_groups: [{name: g, functions: [{name: f}]}]
            """
        )
    )
    with pytest.raises(ValueError, match="returns control"):
        load_config(path)


def test_knowledge_base_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Fjords are long.\n\nGlaciers are cold.")
    path = tmp_path / "agents.yaml"
    path.write_text("knowledge_bases: [{id: KB, path: docs}]\n")
    spec = load_config(path).knowledge_base("KB")
    assert spec is not None
    assert spec.path == tmp_path / "docs"
    assert len(KnowledgeBaseIndex(spec).passages) == 2
    path.write_text("knowledge_bases: [{id: KB, path: missing}]\n")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(path)


def test_calls_that_return_control_are_planned_together(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Pack layers.")
    path = tmp_path / "agents.yaml"
    path.write_text(
        textwrap.dedent(
            """
            knowledge_bases: [{id: KB, path: docs}]
            agents:
              - id: A1
                name: a
                knowledge_bases: [{id: KB, keywords: [pack]}]
                action_groups:
                  - {name: weather, functions: [{name: get_forecast, keywords: [weather],
                                                  parameters: {city: {}}}]}
                  - {name: hotels, functions: [{name: find_hotels, keywords: [hotels],
                                                 parameters: {city: {}}}]}
            """
        )
    )
    agent = load_config(path).agent("A1", "TSTALIASID")
    assert agent is not None

    actions = plan(agent, "Weather in Oslo, what to pack, and hotels in Oslo?", [])
    assert [a.name if isinstance(a, FunctionCall) else type(a) for a in actions] == [
        "weather.get_forecast",
        "hotels.find_hotels",
        KnowledgeLookup,
    ]
