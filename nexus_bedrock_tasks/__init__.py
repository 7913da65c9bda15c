"""Run AWS Bedrock Agents as Prefect workflows and mirror every invocation into Nexus."""

from __future__ import annotations

__version__ = "0.1.0"

from nexus_bedrock_tasks.prefect_clients import reuse_prefect_clients  # noqa: E402
from nexus_bedrock_tasks.tools import tool  # noqa: E402

__all__ = ["__version__", "reuse_prefect_clients", "tool"]
