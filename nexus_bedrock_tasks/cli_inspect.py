"""`nexus-bedrock inspect FILE`: read a recorded InvokeAgent body, show its span tree."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `inspect` command to `app`."""
