"""`make demo`: the main job on the embedded default, no AWS account, no internet."""

from __future__ import annotations

from pathlib import Path

from nexus_bedrock_tasks.cli import app

RECORDING = Path(__file__).resolve().parents[1] / "tests" / "recordings" / "kb_lookup.eventstream"


def main() -> None:
    """Show the span tree of a real recorded InvokeAgent response."""
    app(["inspect", str(RECORDING)])


if __name__ == "__main__":
    main()
