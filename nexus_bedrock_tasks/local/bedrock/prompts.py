"""The prompt texts the emulated model "receives" (``modelInvocationInput.text``).

They hold everything that would grow a real prompt (instruction, tools, conversation
history, memory, earlier tool results), so input token counts grow the way they do on AWS,
and contain no random ids, so the counts are the same on every run.
"""

from __future__ import annotations

import json

from nexus_bedrock_tasks.local.bedrock.config import AgentSpec, ApiOperationSpec, ToolSpec
from nexus_bedrock_tasks.local.bedrock.knowledge import Retrieved
from nexus_bedrock_tasks.local.bedrock.traces import JsonDict

KB_TOOL = "GET__x_amz_knowledgebase_{kb_id}__Search"
COLLABORATOR_TOOL = "AgentCommunication__sendMessage"
PRE_PROCESSING_SYSTEM = (
    "You are a classifying agent that filters user inputs into categories. Category A: "
    "malicious or harmful inputs. Category B: questions about the agent's functions or "
    "prompt. Category C: questions the agent cannot answer with its functions. Category D: "
    "questions the agent can answer with its functions. Category E: answers to questions "
    "the agent asked. Put the category in <category></category> tags."
)
POST_PROCESSING_SYSTEM = (
    "You are an agent tasked with providing more context to an answer that a function "
    "calling agent outputs. Put your response in <final_response></final_response> tags."
)
KB_SYSTEM = (
    "You are a question answering agent. I will provide you with a set of search results. "
    "Answer the user's question using only information from the search results."
)


def tool_name(group: str, tool: ToolSpec) -> str:
    """The name a function or API operation has in prompts and ``tool_use`` blocks."""
    if isinstance(tool, ApiOperationSpec):
        path = tool.path.strip("/").replace("/", "_")
        return f"{tool.method}__{group}__{path}"
    return f"{group}__{tool.name}"


def system_prompt(agent: AgentSpec, memory: list[str]) -> str:
    """The orchestration system prompt of `agent`."""
    lines = [agent.instruction or f"You are {agent.name}.", "", "You can use these tools:"]
    for group in agent.action_groups:
        if group.description:
            lines.append(f"Action group {group.name}: {group.description}")
        for tool in group.tools:
            parameters = ", ".join(
                f"{name}: {spec.type} {spec.description}".rstrip()
                for name, spec in tool.arguments.items()
            )
            name = tool_name(group.name, tool)
            lines.append(f"- {name}({parameters}): {tool.description}".rstrip(": "))
    for use in agent.knowledge_bases:
        kb_tool = KB_TOOL.format(kb_id=use.id)
        lines.append(f"- {kb_tool}(searchQuery: string): {use.description}".rstrip(": "))
    for collaborator in agent.collaborators:
        lines.append(f"- {COLLABORATOR_TOOL}(recipient={collaborator.name}, content: string)")
    if memory:
        lines += ["", "Summary of previous sessions:"]
        lines += [f"- The user asked: {question}" for question in memory]
    return "\n".join(lines)


def orchestration_prompt(
    agent: AgentSpec,
    text: str,
    history: list[tuple[str, str]],
    memory: list[str],
    scratchpad: list[JsonDict],
) -> str:
    """The prompt of one orchestration turn: system, history, the question, tool results."""
    messages: list[JsonDict] = []
    for question, answer in history:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": answer})
    messages.append({"role": "user", "content": text})
    messages += scratchpad
    return _dump({"system": system_prompt(agent, memory), "messages": messages})


def pre_processing_prompt(text: str) -> str:
    """The pre-processing (input classification) prompt."""
    return _dump({"system": PRE_PROCESSING_SYSTEM, "messages": [{"role": "user", "content": text}]})


def post_processing_prompt(text: str, answer: str) -> str:
    """The post-processing prompt."""
    content = f"<user_input>{text}</user_input>\n<latest_response>{answer}</latest_response>"
    messages = [{"role": "user", "content": content}]
    return _dump({"system": POST_PROCESSING_SYSTEM, "messages": messages})


def kb_generation_prompt(query: str, retrieved: list[Retrieved]) -> str:
    """The knowledge-base response generation prompt with the numbered search results."""
    results = "\n".join(
        f"<search_result><content>{r.passage.text}</content>"
        f"<source>{r.passage.chunk_id}</source></search_result>"
        for r in retrieved
    )
    content = f"<search_results>\n{results}\n</search_results>\n<question>{query}</question>"
    return _dump({"system": KB_SYSTEM, "messages": [{"role": "user", "content": content}]})


def _dump(value: JsonDict) -> str:
    return json.dumps(value, ensure_ascii=False)
