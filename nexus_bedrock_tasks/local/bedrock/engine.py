"""One agent answering one request: the phases of an invocation as a stream of events.

Order of a fresh invocation: guardrail on the input, pre-processing, orchestration turns
(one per planned action: model call, rationale, invocation input, the step, observation),
a final orchestration turn with ``finalResponse``, post-processing, guardrail on the
answer, then the answer as ``chunk`` events. A RETURN_CONTROL function (or one needing
confirmation) ends the stream with ``returnControl`` instead; the resume request continues
the same plan with the same ``traceId`` prefix and turn numbers.

Session changes (history, the pending returnControl) are committed only after the last
event was taken, so a stream cut by a fault leaves the session as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncGenerator

from nexus_bedrock_tasks.local.bedrock import planner, prompts, returncontrol, steps, traces
from nexus_bedrock_tasks.local.bedrock.config import AgentSpec
from nexus_bedrock_tasks.local.bedrock.errors import StreamException
from nexus_bedrock_tasks.local.bedrock.guardrails import assess, guardrail_trace
from nexus_bedrock_tasks.local.bedrock.handlers import resolve_handler
from nexus_bedrock_tasks.local.bedrock.planner import (
    Action,
    Delegation,
    DirectAnswer,
    FunctionCall,
    KnowledgeLookup,
)
from nexus_bedrock_tasks.local.bedrock.returncontrol import ToolOutcome
from nexus_bedrock_tasks.local.bedrock.runtime import (
    Runtime,
    TurnRequest,
    alias_arn,
    session_policy,
)
from nexus_bedrock_tasks.local.bedrock.sessions import (
    AnswerPart,
    PendingReturnControl,
    PlanState,
    ReturnedCall,
    Session,
    SessionKey,
)
from nexus_bedrock_tasks.local.bedrock.traces import Envelope, JsonDict, ModelReply, utc_now

Event = tuple[str, JsonDict]
ORCHESTRATION = "orchestrationTrace"
KB_NOT_FOUND = "I could not find an answer to that in the knowledge base."


class AgentRun:
    """One agent handling one request; iterate `events()` once. `answer` is set at the end."""

    def __init__(
        self,
        runtime: Runtime,
        agent: AgentSpec,
        envelope: Envelope,
        key: SessionKey,
        session: Session,
        request: TurnRequest,
    ) -> None:
        self.runtime = runtime
        self.agent = agent
        self.envelope = envelope
        self.key = key
        self.session = session
        self.request = request
        self.answer: str | None = None
        self._started = utc_now()

    def _trace(self, trace: JsonDict, phase: str | None = ORCHESTRATION) -> Event:
        return "trace", self.envelope.wrap({phase: trace} if phase else trace)

    async def _step(self) -> None:
        if self.request.step_latency_s > 0:
            await asyncio.sleep(self.request.step_latency_s)

    async def events(self) -> AsyncGenerator[Event, None]:
        """The events of this request, ending with chunks or a returnControl."""
        pending = self.session.pending
        if self.request.outcomes is not None and pending is not None:
            # A copy: if this stream is cut, the pending returnControl must stay resumable.
            saved = pending.state
            state = dataclasses.replace(
                saved,
                actions=list(saved.actions),
                parts=list(saved.parts),
                scratchpad=list(saved.scratchpad),
            )
            async for event in self._resume(state, pending, self.request.outcomes):
                yield event
        else:
            state = PlanState(str(uuid.uuid4()), self.request.text, [])
            guardrail = self.runtime.config.guardrail(self.agent.guardrail or "")
            if guardrail is not None:
                started, assessment = utc_now(), assess(guardrail, state.user_text)
                trace_id = f"{state.trace_uuid}-guardrail-pre-0"
                span = (started, utc_now())
                yield self._trace(guardrail_trace(trace_id, assessment, False, span), None)
                if assessment:
                    async for event in self._finish(state, guardrail.blocked_input_message, []):
                        yield event
                    return
            if self.agent.pre_processing:
                async for event in self._pre_processing(state):
                    yield event
            state.actions = planner.plan(self.agent, state.user_text, self._earlier_questions())
        async for event in self._orchestrate(state):
            yield event

    def _earlier_questions(self) -> list[str]:
        memory = self.runtime.sessions.memory(session_policy(self.agent), self.session.memory_id)
        return memory + [question for question, _ in self.session.history]

    async def _model_call(
        self,
        trace_id: str,
        prompt_type: str,
        prompt: str,
        reply: ModelReply,
        phase: str = ORCHESTRATION,
        parsed: JsonDict | None = None,
    ) -> AsyncGenerator[Event, None]:
        model = self.agent.model
        yield self._trace(traces.model_input(trace_id, prompt_type, prompt, model), phase)
        started = utc_now()
        await self._step()
        span = (started, utc_now())
        output = traces.model_output(trace_id, prompt, reply, model, span, parsed)
        yield self._trace(output, phase)

    def _orchestration_prompt(self, state: PlanState) -> str:
        memory = self.runtime.sessions.memory(session_policy(self.agent), self.session.memory_id)
        return prompts.orchestration_prompt(
            self.agent, state.user_text, self.session.history, memory, state.scratchpad
        )

    async def _pre_processing(self, state: PlanState) -> AsyncGenerator[Event, None]:
        why = f"The input is a question that {self.agent.name} can answer with its functions."
        reply = ModelReply(f"<thinking>{why}</thinking>\n\n<category>D</category>")
        trace_id = f"{state.trace_uuid}-pre-0"
        prompt = prompts.pre_processing_prompt(state.user_text)
        parsed = {"isValid": True, "rationale": why}
        async for event in self._model_call(
            trace_id, "PRE_PROCESSING", prompt, reply, "preProcessingTrace", parsed
        ):
            yield event

    async def _orchestrate(self, state: PlanState) -> AsyncGenerator[Event, None]:
        while state.next_index < len(state.actions):
            action = state.actions[state.next_index]
            if isinstance(action, DirectAnswer):
                break
            trace_id = f"{state.trace_uuid}-{state.turn}"
            batch = steps.returned_batch(state.actions, state.next_index)
            why, reply = steps.calls_reply(batch) if batch else steps.tool_reply(action)
            async for event in self._model_call(
                trace_id, "ORCHESTRATION", self._orchestration_prompt(state), reply
            ):
                yield event
            yield self._trace(traces.rationale(trace_id, why))
            if batch:
                async for event in self._return_control(state, batch, trace_id):
                    yield event
                return
            succeeded: list[tuple[FunctionCall, str]] = []
            if isinstance(action, FunctionCall):
                yield self._trace(steps.action_input(trace_id, action, None))
                async for event in self._run_lambda(state, action, trace_id, succeeded):
                    yield event
            elif isinstance(action, KnowledgeLookup):
                async for event in self._lookup(state, action, trace_id):
                    yield event
            else:
                async for event in self._delegate(state, action, trace_id):
                    yield event
            state.next_index += 1
            state.turn += 1
            self._queue_follow_ups(state, succeeded)
        async for event in self._answer(state):
            yield event

    async def _return_control(
        self, state: PlanState, batch: list[FunctionCall], trace_id: str
    ) -> AsyncGenerator[Event, None]:
        """The inputs of the calls of `batch`, then one returnControl for all of them."""
        invocation_id = str(uuid.uuid4())
        for call in batch:
            yield self._trace(steps.action_input(trace_id, call, invocation_id))
        returned = tuple(ReturnedCall(call, returncontrol.invocation_type(call)) for call in batch)
        pending = PendingReturnControl(invocation_id, returned, state)
        agent_id = None if self.envelope.inline else self.agent.id
        yield "returnControl", returncontrol.return_control_event(pending, agent_id)
        self._commit(pending=pending)

    async def _resume(
        self, state: PlanState, pending: PendingReturnControl, outcomes: tuple[ToolOutcome, ...]
    ) -> AsyncGenerator[Event, None]:
        trace_id = f"{state.trace_uuid}-{state.turn}"
        succeeded: list[tuple[FunctionCall, str]] = []
        for returned, outcome in zip(pending.calls, outcomes, strict=True):
            call = returned.call
            if not outcome.confirmed:
                text = f"The user denied {call.name}."
                yield self._trace(steps.action_output(trace_id, text))
                answer = f"I did not run {call.name} because it was not confirmed."
                steps.record(state, call, text, answer)
            elif returned.invocation_type == returncontrol.USER_CONFIRMATION:
                async for event in self._run_lambda(state, call, trace_id, succeeded):
                    yield event
            else:
                body = outcome.body or ""
                yield self._trace(steps.action_output(trace_id, body))
                steps.record(
                    state, call, body, steps.outcome_answer(call, body, outcome.response_state)
                )
                if outcome.response_state is None:
                    succeeded.append((call, body))
        state.next_index += len(pending.calls)
        state.turn += 1
        self._queue_follow_ups(state, succeeded)

    def _queue_follow_ups(
        self, state: PlanState, succeeded: list[tuple[FunctionCall, str]]
    ) -> None:
        """Put the ``then:`` targets of the calls that just succeeded next in the plan."""
        chained = planner.follow_ups(self.agent, succeeded, state.user_text, state.actions)
        state.actions[state.next_index : state.next_index] = chained

    async def _run_lambda(
        self,
        state: PlanState,
        call: FunctionCall,
        trace_id: str,
        succeeded: list[tuple[FunctionCall, str]],
    ) -> AsyncGenerator[Event, None]:
        """Run a LAMBDA tool's handler; append (call, result) to `succeeded` if it returns."""
        handler = resolve_handler(call.function.handler or "")
        specs = call.function.arguments
        arguments = {
            name: planner.convert(specs[name], value) for name, value in call.parameters.items()
        }
        started = utc_now()
        await self._step()
        try:
            result = handler(arguments)
        except Exception as exc:  # any error of the handler is a failed Lambda
            reason = f"Lambda of action group {call.group.name} failed: {exc}"
            span = (started, utc_now())
            yield self._trace({"failureTrace": traces.failure(trace_id, reason, span)}, None)
            raise StreamException("dependencyFailedException", reason) from exc
        yield self._trace(steps.action_output(trace_id, result, (started, utc_now())))
        steps.record(state, call, result, steps.render_answer(call, result))
        succeeded.append((call, result))

    async def _lookup(
        self, state: PlanState, action: KnowledgeLookup, trace_id: str
    ) -> AsyncGenerator[Event, None]:
        lookup = {"knowledgeBaseId": action.kb_id, "text": action.query}
        yield self._trace(
            traces.invocation_input(trace_id, "KNOWLEDGE_BASE", "knowledgeBaseLookupInput", lookup)
        )
        started = utc_now()
        await self._step()
        retrieved = self.runtime.index(action.kb_id).retrieve(action.query)
        output = {
            "metadata": {"clientRequestId": str(uuid.uuid4()), **traces.timing(started, utc_now())},
            "retrievedReferences": [item.reference() for item in retrieved],
        }
        yield self._trace(
            traces.observation(trace_id, "KNOWLEDGE_BASE", "knowledgeBaseLookupOutput", output)
        )
        answer = retrieved[0].passage.text if retrieved else KB_NOT_FOUND
        sources = "".join(f"<source>{r.passage.chunk_id}</source>" for r in retrieved[:1])
        reply = ModelReply(
            f"<answer><answer_part><text>{answer}</text>"
            f"<sources>{sources}</sources></answer_part></answer>"
        )
        generation_id = f"{state.trace_uuid}-KB-null-{state.kb_calls}"
        state.kb_calls += 1
        prompt = prompts.kb_generation_prompt(action.query, retrieved)
        async for event in self._model_call(
            generation_id, "KNOWLEDGE_BASE_RESPONSE_GENERATION", prompt, reply
        ):
            yield event
        references = (retrieved[0].reference(),) if retrieved else ()
        state.parts.append(AnswerPart(answer, references))
        tool = prompts.KB_TOOL.format(kb_id=action.kb_id)
        state.scratchpad += steps.exchange(tool, {"searchQuery": action.query}, answer)

    async def _delegate(
        self, state: PlanState, action: Delegation, trace_id: str
    ) -> AsyncGenerator[Event, None]:
        collaborator = action.collaborator
        target = self.runtime.config.agent(collaborator.agent, collaborator.alias)
        if target is None:
            raise KeyError(collaborator.agent)
        account = self.runtime.config.account_id
        arn = alias_arn(self.request.region, account, target.id, target.alias)
        names = {"agentCollaboratorAliasArn": arn, "agentCollaboratorName": collaborator.name}
        payload = {**names, "input": {"text": action.text, "type": "TEXT"}}
        yield self._trace(
            traces.invocation_input(
                trace_id, "AGENT_COLLABORATOR", "agentCollaboratorInvocationInput", payload
            )
        )
        started = utc_now()
        # Like AWS: every level below a supervisor shares one session id, and the
        # collaborator name is that of the first-level collaborator.
        if self.envelope.collaborator_name is None:
            seed = f"{'/'.join(self.key)}/{collaborator.name}"
            session_id = str(uuid.uuid5(uuid.NAMESPACE_URL, seed))
        else:
            session_id = self.envelope.session_id
        envelope = dataclasses.replace(
            self.envelope,
            session_id=session_id,
            caller_chain=(*self.envelope.caller_chain, arn),
            agent_id=target.id,
            alias_id=target.alias,
            version=target.version,
            collaborator_name=self.envelope.collaborator_name or collaborator.name,
        )
        key = (target.id, target.alias, session_id)
        session = self.runtime.sessions.open(key, session_policy(target), None)
        nested_request = TurnRequest(
            text=action.text, region=self.request.region, step_latency_s=self.request.step_latency_s
        )
        run = AgentRun(self.runtime, target, envelope, key, session, nested_request)
        async for kind, event in run.events():
            if kind == "trace":
                yield kind, event
        answer = run.answer or ""
        output = {
            **names,
            "metadata": {"clientRequestId": str(uuid.uuid4()), **traces.timing(started, utc_now())},
            "output": {"text": answer, "type": "TEXT"},
        }
        yield self._trace(
            traces.observation(
                trace_id, "AGENT_COLLABORATOR", "agentCollaboratorInvocationOutput", output
            )
        )
        state.parts.append(AnswerPart(answer))
        recipient = {"recipient": collaborator.name, "content": action.text}
        state.scratchpad += steps.exchange(prompts.COLLABORATOR_TOOL, recipient, answer)

    async def _answer(self, state: PlanState) -> AsyncGenerator[Event, None]:
        last: Action | None = None
        if state.next_index < len(state.actions):
            last = state.actions[state.next_index]
        ask_user = isinstance(last, DirectAnswer) and last.ask_user
        if isinstance(last, DirectAnswer):
            state.parts.append(AnswerPart(last.text))
        answer = steps.PART_SEPARATOR.join(part.text for part in state.parts)
        trace_id = f"{state.trace_uuid}-{state.turn}"
        why = "I need more information from the user." if ask_user else "I can answer now."
        reply = ModelReply(f"<thinking>{why}</thinking>\n<answer>{answer}")
        prompt = self._orchestration_prompt(state)
        async for event in self._model_call(trace_id, "ORCHESTRATION", prompt, reply):
            yield event
        yield self._trace(traces.rationale(trace_id, why))
        span = (self._started, utc_now())
        kind = "ASK_USER" if ask_user else "FINISH"
        yield self._trace(traces.final_response(trace_id, answer, span, kind))
        if self.agent.post_processing:
            prompt = prompts.post_processing_prompt(state.user_text, answer)
            reply = ModelReply(f"<final_response>{answer}</final_response>")
            async for event in self._model_call(
                f"{state.trace_uuid}-post-0",
                "POST_PROCESSING",
                prompt,
                reply,
                "postProcessingTrace",
                {"text": answer},
            ):
                yield event
        citations = steps.citations(state.parts)
        guardrail = self.runtime.config.guardrail(self.agent.guardrail or "")
        if guardrail is not None:
            started, assessment = utc_now(), assess(guardrail, answer)
            trace_id = f"{state.trace_uuid}-guardrail-post-0"
            span = (started, utc_now())
            yield self._trace(guardrail_trace(trace_id, assessment, True, span), None)
            if assessment:
                answer, citations = guardrail.blocked_output_message, []
        async for event in self._finish(state, answer, citations):
            yield event

    async def _finish(
        self, state: PlanState, answer: str, citations: list[JsonDict]
    ) -> AsyncGenerator[Event, None]:
        pieces = steps.chunk_texts(answer, self.request.stream_final_response)
        for number, piece in enumerate(pieces, start=1):
            yield "chunk", traces.chunk(piece, citations if number == len(pieces) else [])
        self.answer = answer
        self.session.history.append((state.user_text, answer))
        self._commit(pending=None)

    def _commit(self, pending: PendingReturnControl | None) -> None:
        self.session.pending = pending
        self.runtime.sessions.touch(self.session)
        if self.request.end_session:
            self.runtime.sessions.end(self.key)
