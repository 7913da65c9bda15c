"""Sessions: history, a pending returnControl, idle expiry, and ``memoryId`` memory.

A session is keyed by (agent id, alias id, session id); inline agents use ("", "INLINE",
session id). A session idle for longer than its TTL, or ended with ``endSession``, is
dropped; if it was used with a ``memoryId`` on an agent with memory enabled, the
questions it saw are kept as that memory's summary for later sessions with the same
``memoryId`` (newest ``max_sessions`` summaries).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nexus_bedrock_tasks.local.bedrock.config import MemorySpec
from nexus_bedrock_tasks.local.bedrock.planner import Action, FunctionCall
from nexus_bedrock_tasks.local.bedrock.traces import JsonDict

SessionKey = tuple[str, str, str]


@dataclass(frozen=True)
class AnswerPart:
    """A piece of the final answer, with the references that support it."""

    text: str
    references: tuple[JsonDict, ...] = ()


@dataclass
class PlanState:
    """How far one invocation got; kept across a returnControl pause."""

    trace_uuid: str
    user_text: str
    actions: list[Action]
    next_index: int = 0
    turn: int = 0
    kb_calls: int = 0
    parts: list[AnswerPart] = field(default_factory=list)
    scratchpad: list[JsonDict] = field(default_factory=list)


@dataclass(frozen=True)
class ReturnedCall:
    """One call of a returnControl, with its ``actionInvocationType``."""

    call: FunctionCall
    invocation_type: str


@dataclass(frozen=True)
class PendingReturnControl:
    """The returnControl a session waits for: one or more calls, answered together."""

    invocation_id: str
    calls: tuple[ReturnedCall, ...]
    state: PlanState


@dataclass
class Session:
    """One conversation with one agent alias."""

    session_id: str
    last_used: float
    history: list[tuple[str, str]] = field(default_factory=list)
    pending: PendingReturnControl | None = None
    memory_id: str | None = None


@dataclass(frozen=True)
class SessionPolicy:
    """What the agent says about its sessions."""

    idle_ttl_seconds: float
    memory: MemorySpec
    memory_scope: str


class SessionStore:
    """All sessions and memories of one emulator instance (used from the event loop only)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._sessions: dict[SessionKey, tuple[Session, SessionPolicy]] = {}
        self._memories: dict[tuple[str, str], list[list[str]]] = {}

    def open(self, key: SessionKey, policy: SessionPolicy, memory_id: str | None) -> Session:
        """The live session for `key`, a new one if there is none or it idled out."""
        self._expire()
        entry = self._sessions.get(key)
        if entry is None:
            session = Session(session_id=key[2], last_used=self._clock())
            self._sessions[key] = (session, policy)
        else:
            session = entry[0]
            session.last_used = self._clock()
        if memory_id is not None:
            session.memory_id = memory_id
        return session

    def touch(self, session: Session) -> None:
        """Restart the idle clock of `session` (end of a request)."""
        session.last_used = self._clock()

    def end(self, key: SessionKey) -> None:
        """End a session now (``endSession``); its questions go to memory."""
        entry = self._sessions.pop(key, None)
        if entry is not None:
            self._remember(*entry)

    def memory(self, policy: SessionPolicy, memory_id: str | None) -> list[str]:
        """The questions remembered for `memory_id`, oldest first."""
        if memory_id is None or not policy.memory.enabled:
            return []
        summaries = self._memories.get((policy.memory_scope, memory_id), [])
        return [question for summary in summaries for question in summary]

    def reset(self) -> None:
        """Forget every session and memory."""
        self._sessions.clear()
        self._memories.clear()

    def _expire(self) -> None:
        now = self._clock()
        for key, (session, policy) in list(self._sessions.items()):
            if now - session.last_used > policy.idle_ttl_seconds:
                del self._sessions[key]
                self._remember(session, policy)

    def _remember(self, session: Session, policy: SessionPolicy) -> None:
        if session.memory_id is None or not policy.memory.enabled or not session.history:
            return
        summaries = self._memories.setdefault((policy.memory_scope, session.memory_id), [])
        summaries.append([question for question, _ in session.history])
        del summaries[: -policy.memory.max_sessions]
