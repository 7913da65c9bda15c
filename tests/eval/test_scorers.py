"""Scorers: the built-ins, plugging one in by import path, and how a case passes."""

from __future__ import annotations

import pytest

from nexus_bedrock_tasks.evaluation.cases import CaseOutcome, EvalCase
from nexus_bedrock_tasks.evaluation.scorers import (
    BUILTIN_SCORERS,
    load_scorer,
    score_case,
    scorer_names,
)
from nexus_bedrock_tasks.exceptions import ConfigError


def outcome(text: str = "Light rain in Paris", **fields: object) -> CaseOutcome:
    base: dict[str, object] = {
        "text": text,
        "finish_reason": "end_turn",
        "input_tokens": 300,
        "output_tokens": 50,
        "total_tokens": 350,
        "latency_s": 1.5,
        "tools": ("weather.get_forecast",),
    }
    base.update(fields)
    return CaseOutcome(**base)  # type: ignore[arg-type]


def case(**fields: object) -> EvalCase:
    return EvalCase.model_validate({"id": "c", "prompt": "Weather in Paris?", **fields})


@pytest.mark.parametrize(
    ("name", "fields", "result", "expected"),
    [
        ("exact", {"expected": " Light rain in Paris\n"}, outcome(), True),
        ("exact", {"expected": "Light rain"}, outcome(), False),
        ("contains", {"must_contain": ["LIGHT RAIN", "paris"]}, outcome(), True),
        ("contains", {"must_contain": ["rain", "snow"]}, outcome(), False),
        ("not_contains", {"must_not_contain": ["snow"]}, outcome(), True),
        ("not_contains", {"must_not_contain": ["PARIS"]}, outcome(), False),
        ("regex", {"expected_regex": r"rain\s+in"}, outcome(), True),
        ("regex", {"expected_regex": r"^rain"}, outcome(), False),
        ("tools", {"expected_tools": ["weather.get_forecast"]}, outcome(), True),
        ("tools", {"expected_tools": ["hotels.find_hotels"]}, outcome(), False),
        ("latency", {"max_latency_s": 1.5}, outcome(), True),
        ("latency", {"max_latency_s": 1.0}, outcome(), False),
        ("tokens", {"max_tokens": 350}, outcome(), True),
        ("tokens", {"max_tokens": 349}, outcome(), False),
        ("finish_reason", {}, outcome(finish_reason="guardrail"), True),
        ("finish_reason", {}, outcome(finish_reason="max_tokens"), False),
        ("finish_reason", {"expected_finish_reason": "max_tokens"},
         outcome(finish_reason="max_tokens"), True),
    ],
)  # fmt: skip
def test_builtin_scorers(
    name: str, fields: dict[str, object], result: CaseOutcome, expected: bool
) -> None:
    assert BUILTIN_SCORERS[name](case(**fields), result) is expected


def test_scorers_without_an_expectation_do_not_apply() -> None:
    card = score_case(case(), outcome(), scorer_names(None), threshold=0.5)
    assert card.scores == {"finish_reason": True} and card.score == 1.0
    assert card.passed(outcome())


def test_case_fails_on_any_failed_score_or_error() -> None:
    names = scorer_names(["default"])
    failing = score_case(case(must_contain=["snow"]), outcome(), names, 0.5)
    assert failing.failed == ("contains",) and failing.score == 0.5
    assert not failing.passed(outcome())
    errored = outcome(error="ThrottlingException: slow down", finish_reason="error")
    card = score_case(case(), errored, names, 0.5)
    assert card.failed == ("finish_reason",) and not card.passed(errored)


def test_custom_scorer_by_import_path_and_threshold() -> None:
    names = scorer_names(["contains", "tests.eval.custom_scorers:polite"])
    assert names == ["contains", "tests.eval.custom_scorers:polite"]
    half = outcome("Please take an umbrella")
    assert score_case(case(), half, names, threshold=0.5).scores == {
        "tests.eval.custom_scorers:polite": 0.5
    }
    assert score_case(case(), half, names, threshold=0.5).passed(half)
    assert not score_case(case(), half, names, threshold=0.75).passed(half)
    assert load_scorer("tests.eval.custom_scorers.polite") is load_scorer(
        "tests.eval.custom_scorers:polite"
    )


def test_a_raising_scorer_fails_the_case_with_the_reason() -> None:
    card = score_case(case(), outcome(), ["tests.eval.custom_scorers:broken"], 0.5)
    assert card.failed == ("tests.eval.custom_scorers:broken",)
    assert card.problem == (
        "scorer 'tests.eval.custom_scorers:broken' raised ValueError: cannot score c"
    )
    assert not card.passed(outcome())


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("exactly", "unknown scorer 'exactly'"),
        ("no_such_module_xyz:fn", "cannot import 'no_such_module_xyz'"),
        ("tests.eval.custom_scorers:missing", "has no function 'missing'"),
        ("tests.eval.custom_scorers:NOT_CALLABLE", "has no function 'NOT_CALLABLE'"),
    ],
)
def test_unknown_scorers_are_config_errors(name: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        scorer_names([name])
    assert message in str(caught.value) and "built-in scorer" in str(caught.value)
