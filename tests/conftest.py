"""Session-wide test environment: an isolated Prefect home, no telemetry, temp spools.

Set before Prefect is imported anywhere, so every test process is isolated from the
developer's own Prefect profile, outbox and tool ledger.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="nbt-tests-"))
os.environ["PREFECT_HOME"] = str(_HOME / "prefect")
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] = "ignore"
os.environ.pop("PREFECT_API_URL", None)
os.environ["NEXUS_BEDROCK_OUTBOX"] = str(_HOME / "outbox.sqlite3")
os.environ["NEXUS_BEDROCK_TOOL_LEDGER"] = str(_HOME / "tool-ledger.sqlite3")
os.environ["XDG_DATA_HOME"] = str(_HOME / "data")
for _name in ("NEXUS_API_KEY", "NEXUS_BASE_URL", "NEXUS_AGENT_ID"):
    os.environ.pop(_name, None)
# A runner started with Ctrl-C ignored (a background job of a non-interactive shell,
# `(make test &)`) passes that on to every process the tests start, and the tests that
# press Ctrl-C on them would fail. A handler of our own is reset to the default in them.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def prefect_backend() -> Iterator[None]:
    """One temporary Prefect API for the whole session (a cold start costs 10-15 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield
