"""InvokeInlineAgent: turn the agent defined in the request into an `AgentSpec`.

Supported: ``functionSchema`` action groups (``customControl: RETURN_CONTROL``, or a
``lambda`` ARN whose function name is a built-in handler such as ``get_forecast``),
``requireConfirmation``, knowledge bases and guardrails defined in the agents file (by id),
``promptOverrideConfiguration`` turning PRE_PROCESSING / POST_PROCESSING on, and
``idleSessionTTLInSeconds``. An inline function is chosen when a prompt mentions a word of
its action group or function name (``weather``/``get_forecast`` → "weather", "forecast";
verbs like get/list/create are skipped); inline knowledge bases have no keywords.
API-schema action groups, built-in parent signatures and collaborators are refused with a
``ValidationException``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from nexus_bedrock_tasks.local.bedrock.config import AgentSpec, EmulatorConfig
from nexus_bedrock_tasks.local.bedrock.errors import not_found, validation_error

INLINE_AGENT_ID = "INLINE"
INLINE_ALIAS_ID = "INLINE"
_VERBS = frozenset("get set list create update delete find fetch do run make call put post".split())


def keywords_of(*names: str) -> tuple[str, ...]:
    """The routing keywords of an inline function: the words of its names, minus verbs."""
    found: list[str] = []
    for name in names:
        for word in re.split(r"[_\-\s]+|(?<=[a-z])(?=[A-Z])", name):
            word = word.lower()
            if len(word) > 2 and word not in _VERBS and word not in found:
                found.append(word)
    return tuple(found)


def _lambda_handler(arn: str) -> str:
    match = re.search(r":function:([^:]+)", arn)
    if match is None:
        raise validation_error(f"actionGroupExecutor.lambda {arn!r} is not a Lambda ARN.")
    return match.group(1)


def _action_group(group: Mapping[str, Any]) -> dict[str, Any]:
    name = str(group.get("actionGroupName", ""))
    executor = group.get("actionGroupExecutor") or {}
    if group.get("parentActionGroupSignature") or group.get("apiSchema"):
        raise validation_error(
            f"Action group {name}: the emulator supports only functionSchema action groups."
        )
    if executor.get("customControl") == "RETURN_CONTROL":
        kind, handler = "RETURN_CONTROL", None
    elif "lambda" in executor:
        kind, handler = "LAMBDA", _lambda_handler(str(executor["lambda"]))
    else:
        raise validation_error(f"Action group {name}: actionGroupExecutor is required.")
    functions = []
    for function in (group.get("functionSchema") or {}).get("functions") or []:
        parameters = {
            parameter: {
                "type": detail.get("type", "string"),
                "description": detail.get("description", ""),
                "required": bool(detail.get("required", False)),
            }
            for parameter, detail in (function.get("parameters") or {}).items()
        }
        functions.append(
            {
                "name": function.get("name"),
                "description": function.get("description", ""),
                "keywords": keywords_of(name, str(function.get("name", ""))),
                "parameters": parameters,
                "require_confirmation": function.get("requireConfirmation") == "ENABLED",
                "handler": handler,
            }
        )
    return {
        "name": name,
        "description": group.get("description", ""),
        "executor": kind,
        "functions": functions,
    }


def inline_agent(body: Mapping[str, Any], config: EmulatorConfig) -> AgentSpec:
    """The agent an InvokeInlineAgent request defines.

    Raises:
        AwsError: ``ValidationException`` for what the emulator does not support or a bad
            definition; ``ResourceNotFoundException`` for an unknown knowledge base or
            guardrail.
    """
    if body.get("collaborators") or body.get("collaboratorConfigurations"):
        raise validation_error("The emulator does not support inline agent collaborators.")
    knowledge_bases = []
    for kb in body.get("knowledgeBases") or []:
        kb_id = str(kb.get("knowledgeBaseId", ""))
        if config.knowledge_base(kb_id) is None:
            raise not_found(f"Knowledge base {kb_id} is not defined in the agents file.")
        knowledge_bases.append({"id": kb_id, "description": kb.get("description", "")})
    guardrail = (body.get("guardrailConfiguration") or {}).get("guardrailIdentifier")
    if guardrail is not None and config.guardrail(guardrail) is None:
        raise not_found(f"Guardrail {guardrail} is not defined in the agents file.")
    prompt_configurations = (body.get("promptOverrideConfiguration") or {}).get(
        "promptConfigurations"
    ) or []
    enabled = {
        item.get("promptType")
        for item in prompt_configurations
        if item.get("promptState") == "ENABLED"
    }
    definition = {
        "id": INLINE_AGENT_ID,
        "alias": INLINE_ALIAS_ID,
        "name": body.get("agentName") or "inline-agent",
        "model": body.get("foundationModel"),
        "instruction": body.get("instruction", ""),
        "pre_processing": "PRE_PROCESSING" in enabled,
        "post_processing": "POST_PROCESSING" in enabled,
        "idle_session_ttl_seconds": body.get("idleSessionTTLInSeconds") or 600,
        "guardrail": guardrail,
        "knowledge_bases": knowledge_bases,
        "action_groups": [_action_group(group) for group in body.get("actionGroups") or []],
    }
    try:
        return AgentSpec.model_validate(definition)
    except ValidationError as exc:
        raise validation_error(f"Invalid inline agent: {exc}") from exc
