"""The agents file: what the emulator serves, as validated pydantic models.

Schema (YAML; every key except ids, names and paths is optional; unknown keys are errors)::

    account_id: "123456789012"        # used in ARNs
    region: us-east-1                 # used in ARNs when the request's signature names none
    knowledge_bases:
      - id: TRAVELKB01
        path: kb/travel               # folder of .txt/.md files, relative to this file
        source_uri_prefix: s3://bucket/prefix/   # default s3://emulator-kb-<id lower-case>/
        number_of_results: 3
    guardrails:
      - id: travel-guardrail
        blocked_topics: [{name: Politics, keywords: [election, politics]}]
        blocked_words: [idiot]
        blocked_input_message: "Sorry, the model cannot answer this question."
        blocked_output_message: "Sorry, the model cannot answer this question."
    agents:
      - id: DEMO000001                # [0-9a-zA-Z]{1,10}
        alias: TSTALIASID             # default TSTALIASID
        version: DRAFT                # agentVersion in traces
        name: travel-assistant
        model: anthropic.claude-3-5-haiku-20241022-v1:0
        instruction: You help travellers.
        pre_processing: false         # emit preProcessingTrace
        post_processing: false        # emit postProcessingTrace
        idle_session_ttl_seconds: 600
        memory: {enabled: true, max_sessions: 20}
        guardrail: travel-guardrail
        knowledge_bases:              # without keywords: used when nothing else matches
          - {id: TRAVELKB01, description: City guides, keywords: []}
        action_groups:
          - name: weather
            description: Weather forecasts.
            executor: RETURN_CONTROL  # or LAMBDA (then every function has a handler)
            functions:                # or api: (below); an action group has one of them
              - name: get_forecast
                description: The forecast for a city.
                keywords: [weather, forecast]
                require_confirmation: false
                handler: get_forecast # LAMBDA only: built-in name or module:function
                answer: "{city}: {result}"   # default "{function} returned: {result}"
                then: booking.POST /reservations   # see "Several rounds" below
                parameters:
                  city:
                    type: string      # string | number | integer | boolean | array
                    required: true
                    description: A city.
                    extract: ["city=(\\w+)"]   # regexes, group 1; see planner.extract_parameter
          - name: booking
            executor: RETURN_CONTROL
            api:                      # OpenAPI-style operations (apiInvocationInput/apiResult)
              - path: /reservations   # apiPath
                method: POST          # httpMethod: GET | POST | PUT | PATCH | DELETE
                keywords: [reserve]
                parameters:           # path/query parameters, as for functions
                  city: {type: string}
                request_body:         # properties of the application/json request body
                  nights: {type: integer}
                answer: "Reserved: {result}"   # {function} is "POST /reservations" here
        collaborators:                # other agents of this file; LAMBDA-only, no confirmation
          - {name: TripPlanner, agent: PLANNER001, alias: TSTALIASID, keywords: [book]}
        fallback_answer: "I'm {name}. ..."   # the answer when nothing matches
        faults: {step_latency_ms: 200}        # see faults.py

Functions and API operations are both "tools": ``keywords``, ``require_confirmation``,
``handler``, ``answer`` and ``then`` mean the same for both. ``answer`` fields: the
tool's parameter values, ``{function}`` (the function name, or ``METHOD /path``) and
``{result}`` (the body the caller or handler returned).

Several calls at once: every RETURN_CONTROL tool (and every tool with
``require_confirmation``) that a prompt's keywords select is returned in ONE
``returnControl`` event, one ``invocationInputs`` entry each, in the order the keywords
appear in the prompt (ties: the order of this file). See `returncontrol`.

Several rounds: ``then: <tool>`` names the tool the agent calls next once this one
succeeded (a result without ``responseState``, or a handler that returned). ``<tool>`` is
``<action group>.<function>`` / ``<action group>.<METHOD> <path>``, or just the function
name / ``METHOD path`` when only one tool of the agent has it. For a RETURN_CONTROL
target this is a second ``returnControl`` with a fresh ``invocationId``; the agent
answers only after the last round. The target's parameters come from the prompt, else
from the previous round's result bodies (same extraction rules); a required one found in
neither makes the agent ask for it (``ASK_USER``). A target the invocation already
called or planned is not called again; ``then`` chains must not loop.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from nexus_bedrock_tasks.local.bedrock.faults import FaultSpec
from nexus_bedrock_tasks.local.bedrock.handlers import resolve_handler

DEFAULT_MODEL = "anthropic.claude-3-5-haiku-20241022-v1:0"
DEFAULT_ALIAS = "TSTALIASID"
DEFAULT_BLOCKED_MESSAGE = "Sorry, the model cannot answer this question."
DEFAULT_FALLBACK = "I'm {name}. I could not find anything that helps with that request."

ParameterType = Literal["string", "number", "integer", "boolean", "array"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParameterSpec(_Strict):
    """A typed function parameter; `extract` regexes (group 1) find its value in the prompt."""

    type: ParameterType = "string"
    description: str = ""
    required: bool = True
    extract: tuple[str, ...] = ()

    @field_validator("extract")
    @classmethod
    def _one_group(cls, patterns: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in patterns:
            if re.compile(pattern).groups < 1:
                raise ValueError(f"extract pattern {pattern!r} needs a capture group")
        return patterns


class _ToolSpec(_Strict):
    """What functions and API operations share."""

    description: str = ""
    keywords: tuple[str, ...] = ()
    require_confirmation: bool = False
    handler: str | None = None
    answer: str = "{function} returned: {result}"
    then: str | None = None


class FunctionSpec(_ToolSpec):
    """One function of an action group (``functionSchema`` style)."""

    name: str = Field(pattern=r"^[0-9a-zA-Z_-]{1,100}$")
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)

    @property
    def label(self) -> str:
        """How answers and error messages name it: the function name."""
        return self.name

    @property
    def arguments(self) -> dict[str, ParameterSpec]:
        """Every parameter the planner fills."""
        return self.parameters


class ApiOperationSpec(_ToolSpec):
    """One operation of an action group (``apiSchema`` style)."""

    path: str = Field(pattern=r"^/\S*$")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"]
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)
    request_body: dict[str, ParameterSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _distinct_names(self) -> ApiOperationSpec:
        shared = sorted(set(self.parameters) & set(self.request_body))
        if shared:
            raise ValueError(f"{self.label}: {shared} are both parameters and request_body")
        return self

    @property
    def label(self) -> str:
        """How answers and error messages name it: ``METHOD /path``."""
        return f"{self.method} {self.path}"

    @property
    def arguments(self) -> dict[str, ParameterSpec]:
        """Every parameter the planner fills: parameters, then request body properties."""
        return {**self.parameters, **self.request_body}


ToolSpec = FunctionSpec | ApiOperationSpec


class ActionGroupSpec(_Strict):
    """An action group and how its functions or API operations run."""

    name: str = Field(pattern=r"^[0-9a-zA-Z_-]{1,100}$")
    description: str = ""
    executor: Literal["RETURN_CONTROL", "LAMBDA"] = "RETURN_CONTROL"
    functions: tuple[FunctionSpec, ...] = ()
    api: tuple[ApiOperationSpec, ...] = ()

    @property
    def tools(self) -> tuple[ToolSpec, ...]:
        """Its functions or API operations, in file order."""
        return (*self.functions, *self.api)

    @model_validator(mode="after")
    def _tools_match_executor(self) -> ActionGroupSpec:
        if bool(self.functions) == bool(self.api):
            raise ValueError(f"action group {self.name} needs functions or api (not both)")
        _unique(f"tool of action group {self.name}", [tool.label for tool in self.tools])
        for tool in self.tools:
            if self.executor == "LAMBDA":
                if tool.handler is None:
                    raise ValueError(f"LAMBDA tool {tool.label} needs a handler")
                resolve_handler(tool.handler)
            elif tool.handler is not None:
                raise ValueError(f"RETURN_CONTROL tool {tool.label} cannot have a handler")
        return self


class KnowledgeBaseSpec(_Strict):
    """A knowledge base: a folder of text files."""

    id: str = Field(pattern=r"^[0-9a-zA-Z]{1,10}$")
    path: Path
    source_uri_prefix: str | None = None
    number_of_results: int = Field(default=3, ge=1, le=100)

    @field_validator("path")
    @classmethod
    def _relative_to_file(cls, path: Path, info: ValidationInfo) -> Path:
        base = (info.context or {}).get("base_dir")
        resolved = path if path.is_absolute() or base is None else Path(base) / path
        if not resolved.is_dir():
            raise ValueError(f"knowledge base folder {resolved} does not exist")
        return resolved


class AgentKnowledgeBase(_Strict):
    """An agent's use of a knowledge base; without keywords it answers every other prompt."""

    id: str
    description: str = ""
    keywords: tuple[str, ...] = ()


class BlockedTopic(_Strict):
    """A denied topic, recognised by its keywords."""

    name: str
    keywords: tuple[str, ...] = Field(min_length=1)


class GuardrailSpec(_Strict):
    """Blocked topics and words, checked on the input and on the answer."""

    id: str
    blocked_topics: tuple[BlockedTopic, ...] = ()
    blocked_words: tuple[str, ...] = ()
    blocked_input_message: str = DEFAULT_BLOCKED_MESSAGE
    blocked_output_message: str = DEFAULT_BLOCKED_MESSAGE


class CollaboratorSpec(_Strict):
    """Another agent of the file this one delegates to when a keyword matches."""

    name: str = Field(pattern=r"^[0-9a-zA-Z_-]{1,100}$")
    agent: str
    alias: str = DEFAULT_ALIAS
    keywords: tuple[str, ...] = Field(min_length=1)


class MemorySpec(_Strict):
    """Session-summary memory, keyed by the request's ``memoryId``."""

    enabled: bool = False
    max_sessions: int = Field(default=20, ge=1)


class AgentSpec(_Strict):
    """One agent alias the emulator answers for."""

    id: str = Field(pattern=r"^[0-9a-zA-Z]{1,10}$")
    alias: str = Field(default=DEFAULT_ALIAS, pattern=r"^[0-9a-zA-Z]{1,10}$")
    version: str = "DRAFT"
    name: str
    model: str = DEFAULT_MODEL
    instruction: str = ""
    pre_processing: bool = False
    post_processing: bool = False
    idle_session_ttl_seconds: float = Field(default=600, gt=0)
    memory: MemorySpec = MemorySpec()
    guardrail: str | None = None
    knowledge_bases: tuple[AgentKnowledgeBase, ...] = ()
    action_groups: tuple[ActionGroupSpec, ...] = ()
    collaborators: tuple[CollaboratorSpec, ...] = ()
    fallback_answer: str = DEFAULT_FALLBACK
    faults: FaultSpec = FaultSpec()

    @model_validator(mode="after")
    def _chains_resolve(self) -> AgentSpec:
        for group in self.action_groups:
            for tool in group.tools:
                path = [f"{group.name}.{tool.label}"]
                step = tool
                while step.then is not None:
                    next_group, step = self.tool(step.then)
                    path.append(f"{next_group.name}.{step.label}")
                    if path[-1] in path[:-1]:
                        raise ValueError(f"agent {self.id}: then cycle: {' -> '.join(path)}")
        return self

    def tool(self, reference: str) -> tuple[ActionGroupSpec, ToolSpec]:
        """The action group and tool a ``then:`` names (see the module docstring).

        Raises:
            ValueError: no tool, or several, have that name.
        """
        found = [
            (group, tool)
            for group in self.action_groups
            for tool in group.tools
            if reference in (tool.label, f"{group.name}.{tool.label}")
        ]
        if len(found) != 1:
            problem = "names no tool" if not found else "is ambiguous; use <action group>.<name>"
            raise ValueError(f"agent {self.id}: then: {reference!r} {problem}")
        return found[0]


class EmulatorConfig(_Strict):
    """The whole agents file."""

    account_id: str = Field(default="123456789012", pattern=r"^\d{12}$")
    region: str = "us-east-1"
    knowledge_bases: tuple[KnowledgeBaseSpec, ...] = ()
    guardrails: tuple[GuardrailSpec, ...] = ()
    agents: tuple[AgentSpec, ...] = ()

    @model_validator(mode="after")
    def _references_resolve(self) -> EmulatorConfig:
        _unique("agent", [(agent.id, agent.alias) for agent in self.agents])
        _unique("knowledge base", [kb.id for kb in self.knowledge_bases])
        _unique("guardrail", [guardrail.id for guardrail in self.guardrails])
        kb_ids = {kb.id for kb in self.knowledge_bases}
        guardrail_ids = {guardrail.id for guardrail in self.guardrails}
        for agent in self.agents:
            for use in agent.knowledge_bases:
                if use.id not in kb_ids:
                    raise ValueError(f"agent {agent.id}: unknown knowledge base {use.id}")
            if agent.guardrail is not None and agent.guardrail not in guardrail_ids:
                raise ValueError(f"agent {agent.id}: unknown guardrail {agent.guardrail}")
            for collaborator in agent.collaborators:
                self._check_collaborator(agent, collaborator, (agent.id,))
        return self

    def _check_collaborator(
        self, agent: AgentSpec, collaborator: CollaboratorSpec, path: tuple[str, ...]
    ) -> None:
        target = self.agent(collaborator.agent, collaborator.alias)
        if target is None:
            raise ValueError(f"agent {agent.id}: unknown collaborator agent {collaborator.agent}")
        if target.id in path:
            raise ValueError(f"collaborator cycle: {' -> '.join((*path, target.id))}")
        if any(group.executor == "RETURN_CONTROL" for group in target.action_groups) or any(
            tool.require_confirmation for group in target.action_groups for tool in group.tools
        ):
            # returnControl would have to bubble up through the supervisor; not emulated.
            raise ValueError(
                f"collaborator {target.id} returns control; the emulator supports only "
                "LAMBDA action groups without confirmation in collaborators"
            )
        for nested in target.collaborators:
            self._check_collaborator(target, nested, (*path, target.id))

    def agent(self, agent_id: str, alias_id: str) -> AgentSpec | None:
        """The agent with this id and alias, if any."""
        for agent in self.agents:
            if agent.id == agent_id and agent.alias == alias_id:
                return agent
        return None

    def knowledge_base(self, kb_id: str) -> KnowledgeBaseSpec | None:
        """The knowledge base with this id, if any."""
        return next((kb for kb in self.knowledge_bases if kb.id == kb_id), None)

    def guardrail(self, guardrail_id: str) -> GuardrailSpec | None:
        """The guardrail with this id, if any."""
        return next((g for g in self.guardrails if g.id == guardrail_id), None)


def _unique(kind: str, keys: list[Any]) -> None:
    seen: set[Any] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"duplicate {kind} {key}")
        seen.add(key)


def load_config(path: Path) -> EmulatorConfig:
    """Read and validate an agents file; relative knowledge-base paths are resolved against it.

    Raises:
        ValueError: unreadable YAML or a schema error, in one line naming the path, the
            place (line and column, or the field) and the fix.
    """
    fix = "compare with deployments/agents.yaml"
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        return EmulatorConfig.model_validate(raw, context={"base_dir": path.parent})
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the agents file: {exc.strerror}") from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = " ".join(str(exc.problem or exc).split())
        raise ValueError(f"{path}{where}: invalid YAML ({problem}): fix the syntax there") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: invalid YAML ({' '.join(str(exc).split())})") from exc
    except ValidationError as exc:
        problems = [
            f"field {'.'.join(map(str, error['loc'])) or '<top>'}: {error['msg']}"
            for error in exc.errors()
        ]
        raise ValueError(f"{path}: {'; '.join(problems)}: {fix}") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {' '.join(str(exc).split())}: {fix}") from exc
