"""The end-to-end fixtures of tests/flow (emulator, local Nexus, tracer, Prefect), shared."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from nexus_bedrock_tasks.local.nexus.testing import LocalNexus
from tests.flow.conftest import (  # noqa: F401 - fixtures
    _collect_prefect_sockets,
    aws_env,
    emulator,
    flow_loop,
    nexus,
    restored_tool_registry,
    stack,
    tools,
    traced,
)


@pytest.fixture(autouse=True)
def _restore_tool_registry() -> Iterator[None]:
    """An evaluation's `tools_module` registers into the process-wide registry: undo it, so
    later tests (tests/flow's unknown-tool case) see only the tools they register."""
    with restored_tool_registry():
        yield


@pytest.fixture
def cli_env(
    prefect_backend: None,
    aws_env: str,  # noqa: F811 - fixture
    nexus: LocalNexus,  # noqa: F811 - fixture
    tmp_path: Path,
) -> dict[str, str]:
    """Environment of a CLI process: the session's Prefect API, emulator, local Nexus."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env.update(
        {
            "PREFECT_API_URL": str(PREFECT_API_URL.value()),
            "NEXUS_BASE_URL": nexus.url,
            "NEXUS_API_KEY": nexus.api_key,
            "NEXUS_BEDROCK_OUTBOX": str(tmp_path / "outbox.sqlite3"),
            "NEXUS_BEDROCK_TOOL_LEDGER": str(tmp_path / "ledger.sqlite3"),
            "PYTHONWARNINGS": "ignore",
        }
    )
    return env
