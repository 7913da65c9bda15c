"""Scorers: plain functions ``(case, outcome) -> bool | float | None``.

A scorer returns None when the case asks nothing of it (no ``expected`` for `exact`),
True/False for a check, or a float in [0, 1] for a grade (it passes at the run's
``score_threshold``). A case passes when the agent answered and every score passes.

Built-in scorers, by name: ``exact``, ``contains``, ``not_contains``, ``regex``,
``tools``, ``latency``, ``tokens``, ``finish_reason``; ``default`` means all of them.
Any other name is an import path to your own function, ``package.module:function`` or
``package.module.function``; it must be importable wherever the cases run (Dask workers,
other machines of a fan-out).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from nexus_bedrock_tasks import semconv
from nexus_bedrock_tasks.evaluation.cases import CaseOutcome, EvalCase
from nexus_bedrock_tasks.exceptions import ConfigError

ScoreValue = bool | float | None
Scorer = Callable[[EvalCase, CaseOutcome], ScoreValue]

DEFAULT_SCORERS = "default"
# Finish reasons that count as an answer when a case names none.
ANSWERED = frozenset({semconv.FINISH_END_TURN, semconv.FINISH_GUARDRAIL})


def exact(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """The answer equals `expected` (surrounding whitespace ignored)."""
    if case.expected is None:
        return None
    return outcome.text.strip() == case.expected.strip()


def contains(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """Every `must_contain` text occurs in the answer (case ignored)."""
    if not case.must_contain:
        return None
    text = outcome.text.casefold()
    return all(part.casefold() in text for part in case.must_contain)


def not_contains(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """No `must_not_contain` text occurs in the answer (case ignored)."""
    if not case.must_not_contain:
        return None
    text = outcome.text.casefold()
    return not any(part.casefold() in text for part in case.must_not_contain)


def regex(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """`expected_regex` matches somewhere in the answer (``re.search``, DOTALL)."""
    if case.expected_regex is None:
        return None
    return re.search(case.expected_regex, outcome.text, re.DOTALL) is not None


def tools(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """Every `expected_tools` entry (``group.function``) was used, in any order."""
    if not case.expected_tools:
        return None
    return set(case.expected_tools) <= set(outcome.tools)


def latency(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """The case (all its turns) took at most `max_latency_s` seconds."""
    if case.max_latency_s is None:
        return None
    return outcome.latency_s <= case.max_latency_s


def tokens(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """The case used at most `max_tokens` tokens (input + output, all turns)."""
    if case.max_tokens is None:
        return None
    return outcome.total_tokens <= case.max_tokens


def finish_reason(case: EvalCase, outcome: CaseOutcome) -> ScoreValue:
    """The finish reason is `expected_finish_reason`, else an answer (end_turn, guardrail)."""
    if case.expected_finish_reason is not None:
        return outcome.finish_reason == case.expected_finish_reason
    return outcome.finish_reason in ANSWERED


BUILTIN_SCORERS: Mapping[str, Scorer] = {
    "exact": exact,
    "contains": contains,
    "not_contains": not_contains,
    "regex": regex,
    "tools": tools,
    "latency": latency,
    "tokens": tokens,
    "finish_reason": finish_reason,
}


@functools.lru_cache(maxsize=64)
def load_scorer(name: str) -> Scorer:
    """A built-in scorer by name, or a function by import path.

    Raises:
        ConfigError: the name is neither, or the import fails.
    """
    if name in BUILTIN_SCORERS:
        return BUILTIN_SCORERS[name]
    module_name, sep, attribute = name.partition(":")
    if not sep:
        module_name, _, attribute = name.rpartition(".")
    hint = (
        f"use a built-in scorer ({', '.join(BUILTIN_SCORERS)}) or an import path like "
        "my_package.scorers:polite"
    )
    if not module_name or not attribute:
        raise ConfigError(f"unknown scorer {name!r}: {hint}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"scorer {name!r}: cannot import {module_name!r} ({exc}); {hint}"
        ) from exc
    scorer = getattr(module, attribute, None)
    if not callable(scorer):
        raise ConfigError(f"scorer {name!r}: {module_name} has no function {attribute!r}; {hint}")
    return scorer  # type: ignore[no-any-return]


def scorer_names(names: Sequence[str] | None) -> list[str]:
    """The scorer names a run uses: ``default`` (or nothing) expands to the built-ins.

    Raises:
        ConfigError: a name does not resolve (checked before any case runs).
    """
    expanded: list[str] = []
    for name in names or [DEFAULT_SCORERS]:
        for item in BUILTIN_SCORERS if name == DEFAULT_SCORERS else [name.strip()]:
            if item not in expanded:
                load_scorer(item)
                expanded.append(item)
    return expanded


@dataclass(frozen=True)
class ScoreCard:
    """The scores of one case and whether it passed.

    Attributes:
        scores: every scorer that applied, by name.
        failed: names of the scores that did not pass.
        score: the mean of the scores (True = 1), None when none applied.
        problem: why a scorer could not score (it raised), else None.
    """

    scores: dict[str, bool | float] = field(default_factory=dict)
    failed: tuple[str, ...] = ()
    score: float | None = None
    problem: str | None = None

    def passed(self, outcome: CaseOutcome) -> bool:
        """The agent answered and every score passed."""
        return outcome.error is None and self.problem is None and not self.failed


def score_case(
    case: EvalCase, outcome: CaseOutcome, names: Sequence[str], threshold: float
) -> ScoreCard:
    """Run the scorers `names` on one case; a scorer that raises fails the case.

    Args:
        threshold: a float score passes at or above it.
    """
    scores: dict[str, bool | float] = {}
    failed: list[str] = []
    problems: list[str] = []
    for name in names:
        try:
            value = load_scorer(name)(case, outcome)
        except Exception as exc:
            problems.append(f"scorer {name!r} raised {type(exc).__name__}: {exc}")
            failed.append(name)
            continue
        if value is None:
            continue
        if isinstance(value, bool):
            scores[name] = value
            ok = value
        else:
            scores[name] = round(float(value), 4)
            ok = float(value) >= threshold
        if not ok:
            failed.append(name)
    mean = sum(float(v) for v in scores.values()) / len(scores) if scores else None
    return ScoreCard(
        scores=scores,
        failed=tuple(failed),
        score=None if mean is None else round(mean, 4),
        problem="; ".join(problems) or None,
    )
