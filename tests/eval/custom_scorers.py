"""Scorers a user plugs in by import path (used by the evaluation tests)."""

from __future__ import annotations

from nexus_bedrock_tasks.evaluation.cases import CaseOutcome, EvalCase


def polite(case: EvalCase, outcome: CaseOutcome) -> bool | float | None:
    """Partial credit: 1.0 for 'please' and 'thank', 0.5 for one of them."""
    text = outcome.text.casefold()
    return (("please" in text) + ("thank" in text)) / 2


def broken(case: EvalCase, outcome: CaseOutcome) -> bool | float | None:
    """Always raises, like a buggy user scorer."""
    raise ValueError(f"cannot score {case.id}")


NOT_CALLABLE = 3
