"""Replay mode: serve recorded InvokeAgent bodies by agent id.

The directory has the layout of ../shared/recordings: an ``index.json`` list of
``{"file": ..., "path": "/agents/<agentId>/agentAliases/...", ...}`` entries and the raw
``.eventstream`` bodies. A request for a recorded agent id (any alias or session) gets that
body's messages unchanged; the in-stream faults still apply per message.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from nexus_bedrock_tasks.local.bedrock.eventstream import split_messages

_AGENT_IN_PATH = re.compile(r"^/agents/([^/]+)/")


class ReplayLibrary:
    """The recordings of one directory, as messages per agent id (first recording wins)."""

    def __init__(self, directory: Path) -> None:
        index_file = directory / "index.json"
        try:
            entries = json.loads(index_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read replay index {index_file}: {exc}") from exc
        self._messages: dict[str, list[bytes]] = {}
        for entry in entries:
            match = _AGENT_IN_PATH.match(str(entry.get("path", "")))
            if match is None or match.group(1) in self._messages:
                continue
            body = (directory / str(entry["file"])).read_bytes()
            self._messages[match.group(1)] = split_messages(body)

    @property
    def agent_ids(self) -> list[str]:
        """The agent ids that have a recording."""
        return sorted(self._messages)

    def messages(self, agent_id: str) -> list[bytes] | None:
        """The recorded messages for `agent_id`, or None."""
        return self._messages.get(agent_id)
