"""CLI commands of this package (registered by nexus_bedrock_tasks.cli)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this package's commands to `app`."""
