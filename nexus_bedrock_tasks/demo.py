"""`make demo`: the main job on the embedded default, no AWS account, no internet.

Expects the local stack (`nexus-bedrock local up`, which `make demo` runs first): the
Bedrock emulator's demo agent answers a knowledge-base question and a weather question
(served by a local tool through returnControl), each traced into the local Nexus.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

DEMO_TOOLS = Path(__file__).resolve().parents[1] / "deployments" / "demo_tools.py"
PROMPTS = ("What should I pack for a city trip?", "What's the weather in Paris tomorrow?")


def _print_trace(base_url: str, api_key: str, trace_id: str) -> None:
    import httpx
    from rich.console import Console
    from rich.tree import Tree

    trace = httpx.get(
        f"{base_url}/api/v1/traces/{trace_id}",
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=10,
    ).json()
    tree = Tree(f"[bold]{trace['metadata'].get('prompt')}[/bold]  status={trace['status']}")
    children: dict[str | None, list[dict[str, Any]]] = {}
    for span in trace["spans"]:
        children.setdefault(span["parent_span_id"], []).append(span)

    def add(node: Tree, parent: str | None) -> None:
        for span in children.get(parent, []):
            label = span["name"] if span["status"] == "ok" else f"[red]{span['name']}[/red]"
            if span["name"] == "summary":
                figures = json.loads(span["output"])
                label += (
                    f"  [dim]{figures['finish_reason']}, {figures['total_tokens']} tokens, "
                    f"{figures['llm_calls']} llm calls, {figures['tool_calls']} tool calls[/dim]"
                )
            add(node.add(label), span["id"])

    add(tree, None)
    Console().print(tree)


def main() -> int:
    """Run the demo agent twice and show both traces; 0 when both answered."""
    from nexus_bedrock_tasks.cli_runtime import prepare_flow_runtime

    mode = prepare_flow_runtime(verbose=False)
    base_url, api_key = os.environ.get("NEXUS_BASE_URL"), os.environ.get("NEXUS_API_KEY")
    if not (base_url and api_key and os.environ.get("AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME")):
        print("error: the local stack is not up: run `nexus-bedrock local up`", file=sys.stderr)
        return 2
    from nexus_bedrock_tasks.cli_invoke import close_export, configure_tracing, run_flow
    from nexus_bedrock_tasks.tools import load_tools

    load_tools(str(DEMO_TOOLS))
    exporter = configure_tracing(enabled=True)
    results: list[Any] = []
    for prompt in PROMPTS:
        print(f"\n>>> {prompt}")
        result, error = run_flow(
            {"agent_id": "DEMO000001", "agent_alias_id": "TSTALIASID", "prompt": prompt}
        )
        if result is None or error is not None:
            print(f"error: {error}", file=sys.stderr)
            return 1
        print(result.text)
        results.append(result)
    exporter.flush(10)
    for result in results:
        trace_id = exporter.nexus_trace_id(result.local_trace_id, timeout=5)
        if trace_id:
            print()
            _print_trace(base_url, api_key, trace_id)
    close_export(exporter)
    print(f"\nTraces: {base_url}/  (Prefect API: {mode}, {os.environ.get('PREFECT_API_URL')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
