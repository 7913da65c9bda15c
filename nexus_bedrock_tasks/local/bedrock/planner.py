"""The deterministic "model": which steps answer a prompt, and with what words.

Routing, in this order:

1. Every tool (function or API operation), collaborator and knowledge base *with
   keywords* whose keyword starts a word of the prompt (case-insensitive) is used once, in
   the order the keywords appear. A tool's parameters are pulled from the prompt (see
   `extract_parameter`); if a required one is missing, the agent asks for it instead
   (``ASK_USER``) and stops there. The calls that return control to the caller are moved
   together, to where the first of them was: they are returned in one ``returnControl``.
2. Otherwise, a prompt about the past ("earlier", "previous", "remember", "last time") is
   answered from the session history and the ``memoryId`` memory.
3. Otherwise every knowledge base *without* keywords is searched.
4. Otherwise the agent's ``fallback_answer``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from nexus_bedrock_tasks.local.bedrock.config import (
    ActionGroupSpec,
    AgentSpec,
    CollaboratorSpec,
    ParameterSpec,
    ToolSpec,
)

_RECALL = re.compile(r"\b(earlier|previous(ly)?|remember|last time)\b", re.IGNORECASE)
_NOT_PLACES = "the|a|an|my|our|this|that|today|tomorrow|tonight|next|general|advance"
_CAPITALISED_PLACE = r"\b(?:in|for|at|to|from|about)\s+([A-Z][\w'-]*(?:\s+[A-Z][\w'-]*)*)"
_LOWERCASE_PLACE = rf"(?i)\b(?:in|for|at)\s+(?!(?:{_NOT_PLACES})\b)([a-z][\w'-]*)"


@dataclass(frozen=True)
class FunctionCall:
    """Call a function or API operation of `group` with these (string) parameter values."""

    group: ActionGroupSpec
    function: ToolSpec
    parameters: dict[str, str]

    @property
    def name(self) -> str:
        """``group.function`` or ``group.METHOD /path``."""
        return f"{self.group.name}.{self.function.label}"

    @property
    def returns_control(self) -> bool:
        """Whether the caller gets it in a ``returnControl`` (to run it, or to confirm it)."""
        return self.group.executor == "RETURN_CONTROL" or self.function.require_confirmation

    def typed_parameters(self, specs: dict[str, ParameterSpec]) -> list[dict[str, str]]:
        """``[{name, type, value}]`` of the values found for the parameters in `specs`."""
        return [
            {"name": name, "type": spec.type, "value": self.parameters[name]}
            for name, spec in specs.items()
            if name in self.parameters
        ]


@dataclass(frozen=True)
class KnowledgeLookup:
    """Search knowledge base `kb_id` for `query`."""

    kb_id: str
    query: str


@dataclass(frozen=True)
class Delegation:
    """Hand `text` to a collaborator agent."""

    collaborator: CollaboratorSpec
    text: str


@dataclass(frozen=True)
class DirectAnswer:
    """Answer without any tool. `ask_user` marks a question back to the user."""

    text: str
    ask_user: bool = False


Action = FunctionCall | KnowledgeLookup | Delegation | DirectAnswer


def _keyword_position(keywords: tuple[str, ...], text: str) -> int | None:
    positions = [
        match.start()
        for keyword in keywords
        if (match := re.search(r"\b" + re.escape(keyword), text, re.IGNORECASE))
    ]
    return min(positions) if positions else None


def plan(agent: AgentSpec, text: str, earlier_questions: list[str]) -> list[Action]:
    """The actions that answer `text`, the last one possibly a `DirectAnswer`."""
    routes: list[tuple[int, int, Action]] = []
    order = 0
    for group in agent.action_groups:
        for tool in group.tools:
            position = _keyword_position(tool.keywords, text)
            if position is not None:
                routes.append((position, order, _function_call(group, tool, [text])))
            order += 1
    for collaborator in agent.collaborators:
        position = _keyword_position(collaborator.keywords, text)
        if position is not None:
            routes.append((position, order, Delegation(collaborator, text)))
        order += 1
    for use in agent.knowledge_bases:
        position = _keyword_position(use.keywords, text) if use.keywords else None
        if position is not None:
            routes.append((position, order, KnowledgeLookup(use.id, text)))
        order += 1
    actions = _up_to_question([action for _, _, action in sorted(routes, key=lambda r: r[:2])])
    if actions:
        return gather_returned_calls(actions)
    if _RECALL.search(text) and earlier_questions:
        quoted = "; ".join(f'"{question}"' for question in earlier_questions)
        return [DirectAnswer(f"Earlier you asked: {quoted}.")]
    catch_all = [KnowledgeLookup(use.id, text) for use in agent.knowledge_bases if not use.keywords]
    if catch_all:
        return list(catch_all)
    return [DirectAnswer(render(agent.fallback_answer, {"name": agent.name}))]


def _up_to_question(actions: list[Action]) -> list[Action]:
    """`actions` up to and including the first `DirectAnswer` (the plan stops there)."""
    for index, action in enumerate(actions):
        if isinstance(action, DirectAnswer):
            return actions[: index + 1]
    return actions


def gather_returned_calls(actions: list[Action]) -> list[Action]:
    """`actions` with every call that returns control moved to where the first one is."""
    returned = [a for a in actions if isinstance(a, FunctionCall) and a.returns_control]
    if not returned:
        return actions
    first = actions.index(returned[0])
    rest = [a for a in actions[first:] if not (isinstance(a, FunctionCall) and a.returns_control)]
    return [*actions[:first], *returned, *rest]


def follow_ups(
    agent: AgentSpec,
    succeeded: list[tuple[FunctionCall, str]],
    user_text: str,
    planned: list[Action],
) -> list[Action]:
    """The calls that the ``then:`` of the `succeeded` (call, result) pairs chain into.

    A target already in `planned` (or chained twice) is called once. Parameters come from
    `user_text`, else from the results, in order; a missing required one gives the
    ``ASK_USER`` question instead, and nothing after it.
    """
    texts = [user_text, *(result for _, result in succeeded)]
    seen = {action.name for action in planned if isinstance(action, FunctionCall)}
    actions: list[Action] = []
    for call, _ in succeeded:
        if call.function.then is None:
            continue
        group, tool = agent.tool(call.function.then)
        if f"{group.name}.{tool.label}" not in seen:
            seen.add(f"{group.name}.{tool.label}")
            actions.append(_function_call(group, tool, texts))
    return gather_returned_calls(_up_to_question(actions))


def _function_call(group: ActionGroupSpec, tool: ToolSpec, texts: list[str]) -> Action:
    values: dict[str, str] = {}
    for name, spec in tool.arguments.items():
        value = next(
            (v for text in texts if (v := extract_parameter(name, spec, text)) is not None), None
        )
        if value is not None:
            values[name] = value
        elif spec.required:
            return DirectAnswer(
                f"To use {group.name}.{tool.label} I need the {name}. Please tell me the {name}.",
                ask_user=True,
            )
    return FunctionCall(group, tool, values)


def _default_patterns(name: str, spec: ParameterSpec) -> list[str]:
    explicit = rf"(?i)\b{re.escape(name)}\s*[:=]\s*([^\s,;]+)"
    if spec.type == "integer":
        return [explicit, rf"(?i)(-?\d+)\s+{re.escape(name)}", r"(-?\d+)"]
    if spec.type == "number":
        return [explicit, rf"(?i)(-?\d+(?:\.\d+)?)\s+{re.escape(name)}", r"(-?\d+(?:\.\d+)?)"]
    if spec.type == "string":
        return [explicit, _CAPITALISED_PLACE, _LOWERCASE_PLACE]
    return [explicit]


def extract_parameter(name: str, spec: ParameterSpec, text: str) -> str | None:
    """The value of parameter `name` found in `text`, or None.

    The YAML ``extract`` regexes are tried in order (group 1 is the value); without them:
    ``name: value`` / ``name=value``; for integer/number parameters ``<n> name`` and then the
    first number; for string parameters the capitalised words after in/for/at/to/from/about
    ("weather in New York" gives "New York") and then a lower-case word after in/for/at.
    A value that does not parse as the parameter's type is skipped.
    """
    for pattern in spec.extract or _default_patterns(name, spec):
        match = re.search(pattern, text)
        if match and match.group(1) and convert(spec, match.group(1).strip()) is not None:
            return match.group(1).strip()
    return None


def convert(spec: ParameterSpec, value: str) -> object:
    """`value` as the parameter's declared type, or None if it does not parse."""
    try:
        if spec.type == "integer":
            return int(value)
        if spec.type == "number":
            return float(value)
    except ValueError:
        return None
    if spec.type == "boolean":
        return {"true": True, "false": False}.get(value.lower())
    if spec.type == "array":
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


class _KeepMissing(dict[str, object]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, values: dict[str, object]) -> str:
    """`template` with ``{name}`` fields filled; unknown fields stay as they are."""
    return template.format_map(_KeepMissing(values))
