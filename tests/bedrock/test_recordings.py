"""The reader and span builder on every real recording, checked against figures computed
here straight from the raw JSON payloads (no botocore parser, no reader code)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from botocore.eventstream import EventStreamBuffer

from nexus_bedrock_tasks.bedrock.model import (
    AgentTurn,
    CollaboratorCall,
    ModelCall,
    Step,
)
from nexus_bedrock_tasks.bedrock.reader import read_raw
from nexus_bedrock_tasks.nexus.records import utcnow
from nexus_bedrock_tasks.nexus.span_builder import summary_span, turn_spans
from nexus_bedrock_tasks.settings import BedrockTasksSettings
from nexus_bedrock_tasks.summary import summarize

RECORDINGS = Path(__file__).resolve().parents[1] / "recordings"
SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "recordings"
FILES = sorted(RECORDINGS.glob("*.eventstream"))
PHASES = {
    "preProcessingTrace": "preprocessing",
    "orchestrationTrace": "orchestration",
    "postProcessingTrace": "postprocessing",
    "routingClassifierTrace": "routing",
    "customOrchestrationTrace": "custom",
}


@dataclass
class RawFigures:
    """What a person counting by hand in the raw payloads would find."""

    usage: dict[str, list[int]] = field(default_factory=dict)  # phase -> [in, out]
    model_outputs: int = 0
    kb_inputs: int = 0
    kb_references: int = 0
    action_inputs: int = 0
    code_inputs: int = 0
    collaborator_inputs: int = 0
    guardrail_interventions: int = 0
    citations: int = 0
    text: bytes = b""
    # (caller-chain depth, inputTokens) of every model output: the nesting to reproduce.
    depth_tokens: Counter[tuple[int, int]] = field(default_factory=Counter)


def raw_figures(path: Path) -> RawFigures:
    buffer = EventStreamBuffer()
    buffer.add_data(path.read_bytes())
    figures = RawFigures()
    for message in buffer:
        payload = json.loads(message.payload)
        kind = message.headers[":event-type"]
        if kind == "chunk":
            figures.text += base64.b64decode(payload.get("bytes", ""))
            figures.citations += len((payload.get("attribution") or {}).get("citations", []))
            continue
        if kind != "trace":
            continue
        depth = len(payload.get("callerChain", [])) - 1
        for phase_key, body in payload["trace"].items():
            if phase_key == "guardrailTrace":
                figures.guardrail_interventions += body.get("action") == "INTERVENED"
                continue
            phase = PHASES[phase_key]
            output = body.get("modelInvocationOutput")
            if output is not None:
                figures.model_outputs += 1
                usage = output["metadata"]["usage"]
                totals = figures.usage.setdefault(phase, [0, 0])
                totals[0] += usage["inputTokens"]
                totals[1] += usage["outputTokens"]
                figures.depth_tokens[(depth, usage["inputTokens"])] += 1
            invocation = body.get("invocationInput", {})
            figures.kb_inputs += "knowledgeBaseLookupInput" in invocation
            figures.action_inputs += "actionGroupInvocationInput" in invocation
            figures.code_inputs += "codeInterpreterInvocationInput" in invocation
            figures.collaborator_inputs += "agentCollaboratorInvocationInput" in invocation
            kb_output = body.get("observation", {}).get("knowledgeBaseLookupOutput")
            if kb_output:
                figures.kb_references += len(kb_output["retrievedReferences"])
    return figures


def model_depths(steps: tuple[Step, ...], depth: int = 0) -> Counter[tuple[int, int]]:
    found: Counter[tuple[int, int]] = Counter()
    for step in steps:
        if isinstance(step, ModelCall) and step.usage is not None:
            found[(depth, step.usage.input_tokens)] += 1
        if isinstance(step, CollaboratorCall):
            found += model_depths(step.steps, depth + 1)
    return found


def read(path: Path) -> AgentTurn:
    return read_raw(path.read_bytes())


def test_every_shared_recording_is_covered() -> None:
    index = json.loads((RECORDINGS / "index.json").read_text())
    assert {entry["file"] for entry in index} == {path.name for path in FILES}
    if SHARED.is_dir():
        assert {p.name for p in SHARED.glob("*.eventstream")} == {p.name for p in FILES}
        for path in FILES:
            assert (SHARED / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_reader_matches_raw_figures(path: Path) -> None:
    raw = raw_figures(path)
    turn = read(path)
    by_phase = {
        phase: [u.input_tokens, u.output_tokens] for phase, u in turn.usage_by_phase().items()
    }
    assert by_phase == raw.usage
    assert turn.usage.input_tokens == sum(v[0] for v in raw.usage.values())
    assert turn.usage.output_tokens == sum(v[1] for v in raw.usage.values())
    assert turn.text == raw.text.decode("utf-8")
    assert len(turn.citations) == raw.citations
    assert model_depths(turn.steps) == raw.depth_tokens
    assert turn.error is None

    summary = summarize([turn], prices=BedrockTasksSettings().model_prices)
    assert summary.llm_calls == raw.model_outputs
    assert summary.kb_lookups == raw.kb_inputs
    assert summary.action_calls == raw.action_inputs
    assert summary.code_interpreter_calls == raw.code_inputs
    assert summary.collaborator_calls == raw.collaborator_inputs
    assert summary.guardrail_interventions == raw.guardrail_interventions
    assert summary.citations == raw.citations
    assert summary.answer_chars == len(raw.text.decode("utf-8"))
    assert summary.total_tokens == summary.input_tokens + summary.output_tokens
    kb_refs = sum(len(s.references) for s in turn.walk() if s.kind == "kb")
    assert kb_refs == raw.kb_references


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_span_builder_follows_the_contract(path: Path) -> None:
    raw = raw_figures(path)
    turn = read(path)
    built = turn_spans(turn, None, fallback_time=utcnow())
    spans = list(built.spans)
    seen: set[str] = set()
    for span in spans:  # parents are always posted before their children
        assert span.parent_local_id is None or span.parent_local_id in seen
        seen.add(span.local_id)
        assert span.ended_at is not None and span.ended_at >= span.started_at
    names = Counter(span.name.split(":")[0] if ":" in span.name else span.name for span in spans)
    assert names["llm"] == raw.model_outputs
    assert names["kb"] == raw.kb_inputs
    assert names["collaborator"] == raw.collaborator_inputs
    assert names["code_interpreter"] == raw.code_inputs
    assert names["guardrail"] >= raw.guardrail_interventions
    llm_tokens = sum(s.output["input_tokens"] for s in spans if s.name.startswith("llm:"))
    assert llm_tokens == sum(v[0] for v in raw.usage.values())

    summary = summarize([turn], prices=BedrockTasksSettings().model_prices)
    span = summary_span(summary, started_at=utcnow(), ended_at=utcnow())
    assert span.name == "summary" and span.parent_local_id is None
    assert list(span.output) == [
        "finish_reason", "input_tokens", "output_tokens", "total_tokens", "llm_calls",
        "kb_lookups", "action_calls", "code_interpreter_calls", "collaborator_calls",
        "guardrail_interventions", "return_control_rounds", "tool_calls", "citations",
        "retries", "answer_chars", "cost_usd",
    ]  # fmt: skip


def test_multi_agent_nesting_and_totals() -> None:
    turn = read(RECORDINGS / "multi_agent_collaborators.eventstream")
    top = [s.kind for s in turn.steps]
    assert top == ["llm", "collaborator", "llm"]
    supervisor = turn.steps[1]
    assert isinstance(supervisor, CollaboratorCall) and supervisor.name == "SimpleSupervisor"
    inner = [s for s in supervisor.steps if isinstance(s, CollaboratorCall)]
    assert [c.name for c in inner] == ["MathSolverAgent", "MathSolverAgent"]
    assert [len(c.steps) for c in inner] == [5, 1]
    assert (supervisor.output_text or "").startswith(
        "The sum of the first 10 Fibonacci numbers is 88."
    )
    assert (supervisor.output_text or "").endswith("= 88")
    # 900+1214 (root) + 1030+1333+1527 (supervisor) + 477+718+954+1190+1423+1613 (math)
    assert turn.usage.input_tokens == 12379
    assert turn.usage.output_tokens == 156 + 20 + 201 + 139 + 193 + 118 + 115 + 115 + 81 + 145 + 142
    assert turn.text == "The sum of the first 10 Fibonacci numbers is 88."
    assert turn.finish_reason == "end_turn"


def test_kb_lookup_details() -> None:
    turn = read(RECORDINGS / "kb_lookup.eventstream")
    kb = turn.steps[0]
    assert kb.kind == "kb"
    assert kb.query == "What is Task decomposition?" and kb.knowledge_base_id == "SSGLURQ9A5"
    # CUSTOM location: the URI comes from x-amz-bedrock-kb-source-uri, not s3Location.
    assert {ref.uri for ref in kb.references} == {"2222"}
    llm = turn.steps[1]
    assert isinstance(llm, ModelCall)
    assert llm.model == "claude-3-5-sonnet-20240620"  # absent foundationModel → rawResponse
    assert llm.stop_reason == "end_turn" and llm.prompt_type == "KNOWLEDGE_BASE_RESPONSE_GENERATION"
    assert llm.timing.duration_ms == 7324
    assert len(turn.citations) == 1
    citation = turn.citations[0]
    assert (citation.span_start, citation.span_end) == (0, 1468)
    assert len(citation.references) >= 1


def test_guardrail_and_trace_disabled() -> None:
    guarded = read(RECORDINGS / "guardrail_intervened.eventstream")
    assert guarded.finish_reason == "guardrail"
    assert guarded.text == "Sorry, the model cannot answer this question."
    assert guarded.usage.total_tokens == 0
    plain = read(RECORDINGS / "trace_disabled.eventstream")
    assert plain.steps == () and plain.finish_reason == "end_turn"
    assert plain.text.startswith("Based on the latest market data")


def test_pre_and_post_processing_phases() -> None:
    turn = read(RECORDINGS / "pre_and_post_processing.eventstream")
    phases = [s.phase for s in turn.steps if isinstance(s, ModelCall)]
    assert phases == [
        "preprocessing",
        "orchestration",
        "orchestration",
        "orchestration",
        "postprocessing",
    ]
    usage = turn.usage_by_phase()
    assert (usage["preprocessing"].input_tokens, usage["preprocessing"].output_tokens) == (461, 120)
    assert (usage["postprocessing"].input_tokens, usage["postprocessing"].output_tokens) == (
        1272,
        82,
    )
    assert usage["orchestration"].input_tokens == 412 + 672 + 901
    rationales = [s.rationale for s in turn.steps if isinstance(s, ModelCall) and s.rationale]
    assert len(rationales) == 3


def test_code_interpreter_error_and_output() -> None:
    turn = read(RECORDINGS / "code_interpreter.eventstream")
    calls = [s for s in turn.steps if s.kind == "code_interpreter"]
    assert len(calls) == 2
    assert calls[0].error is not None and calls[0].error.startswith("Traceback")
    assert calls[1].output == "(a+b)^3 = 125 when a = 2 and b = 3" and calls[1].error is None
    spans = turn_spans(turn, None, fallback_time=utcnow()).spans
    statuses = [s.status for s in spans if s.name == "code_interpreter"]
    assert statuses == ["error", "ok"]
