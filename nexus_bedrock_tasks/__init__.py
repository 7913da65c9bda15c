"""Run AWS Bedrock Agents as Prefect workflows and mirror every invocation into Nexus."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
