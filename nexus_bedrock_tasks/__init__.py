"""Run AWS Bedrock Agents as Prefect workflows and mirror every invocation into Nexus."""

from __future__ import annotations

__version__ = "0.1.0"

# Not `typing.TYPE_CHECKING`: importing typing alone costs the launcher ~10 ms.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from nexus_bedrock_tasks.prefect_clients import reuse_prefect_clients
    from nexus_bedrock_tasks.tools import tool

__all__ = ["__version__", "reuse_prefect_clients", "tool"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI's launcher imports this package and must stay light
    # (`tools` pulls in asyncio and pydantic).
    if name == "tool":
        from nexus_bedrock_tasks.tools import tool

        return tool
    if name == "reuse_prefect_clients":
        from nexus_bedrock_tasks.prefect_clients import reuse_prefect_clients

        return reuse_prefect_clients
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
