"""Guardrail checks: blocked topics and words, as ``guardrailTrace`` assessments."""

from __future__ import annotations

import re
import uuid
from datetime import datetime

from nexus_bedrock_tasks.local.bedrock.config import GuardrailSpec
from nexus_bedrock_tasks.local.bedrock.traces import JsonDict, timing


def _mentions(term: str, text: str) -> bool:
    return re.search(r"\b" + re.escape(term) + r"\b", text, re.IGNORECASE) is not None


def assess(guardrail: GuardrailSpec, text: str) -> JsonDict:
    """The assessment of `text`: empty when nothing is blocked."""
    assessment: JsonDict = {}
    topics = [
        {"action": "BLOCKED", "name": topic.name, "type": "DENY"}
        for topic in guardrail.blocked_topics
        if any(_mentions(keyword, text) for keyword in topic.keywords)
    ]
    if topics:
        assessment["topicPolicy"] = {"topics": topics}
    words = [
        {"action": "BLOCKED", "match": word}
        for word in guardrail.blocked_words
        if _mentions(word, text)
    ]
    if words:
        assessment["wordPolicy"] = {"customWords": words}
    return assessment


def guardrail_trace(
    trace_id: str, assessment: JsonDict, on_output: bool, span: tuple[datetime, datetime]
) -> JsonDict:
    """A ``guardrailTrace``: INTERVENED when the assessment blocked anything, else NONE."""
    return {
        "guardrailTrace": {
            "action": "INTERVENED" if assessment else "NONE",
            "outputAssessments" if on_output else "inputAssessments": [assessment],
            "metadata": {"clientRequestId": str(uuid.uuid4()), **timing(*span)},
            "traceId": trace_id,
        }
    }
