"""What agent runs share: the server-wide runtime and the parts of a request they act on."""

from __future__ import annotations

from dataclasses import dataclass

from nexus_bedrock_tasks.local.bedrock.config import AgentSpec, EmulatorConfig
from nexus_bedrock_tasks.local.bedrock.knowledge import KnowledgeBaseIndex
from nexus_bedrock_tasks.local.bedrock.returncontrol import ToolOutcome
from nexus_bedrock_tasks.local.bedrock.sessions import SessionPolicy, SessionStore


def alias_arn(region: str, account_id: str, agent_id: str, alias_id: str) -> str:
    """The agent alias ARN used in ``callerChain`` and collaborator events."""
    return f"arn:aws:bedrock:{region}:{account_id}:agent-alias/{agent_id}/{alias_id}"


def session_policy(agent: AgentSpec) -> SessionPolicy:
    """The session rules of `agent`."""
    return SessionPolicy(agent.idle_session_ttl_seconds, agent.memory, f"{agent.id}/{agent.alias}")


class Runtime:
    """Server-wide state the runs share: the config, sessions and knowledge-base indexes."""

    def __init__(self, config: EmulatorConfig, sessions: SessionStore) -> None:
        self.config = config
        self.sessions = sessions
        self._indexes: dict[str, KnowledgeBaseIndex] = {}

    def index(self, kb_id: str) -> KnowledgeBaseIndex:
        """The (lazily built) index of a knowledge base of the config."""
        if kb_id not in self._indexes:
            spec = self.config.knowledge_base(kb_id)
            if spec is None:
                raise KeyError(kb_id)
            self._indexes[kb_id] = KnowledgeBaseIndex(spec)
        return self._indexes[kb_id]


@dataclass(frozen=True)
class TurnRequest:
    """The parts of a request an agent run acts on."""

    text: str
    region: str
    outcomes: tuple[ToolOutcome, ...] | None = None
    end_session: bool = False
    stream_final_response: bool = False
    step_latency_s: float = 0.0
