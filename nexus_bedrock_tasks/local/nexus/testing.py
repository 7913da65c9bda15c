"""Run the local Nexus server in a background thread, for tests and benchmarks.

Example:
    >>> with run_local_nexus(faults=True, monthly_trace_limit=5) as nexus:
    ...     client = NexusClient(base_url=nexus.url, api_key=nexus.api_key)
    ...     nexus.faults.fail_next(2)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from fastapi import FastAPI
from typing_extensions import Unpack

from nexus_bedrock_tasks.local.nexus.app import create_app
from nexus_bedrock_tasks.local.nexus.config import DEFAULT_HOST, DEV_KEY, PlanLimitOptions
from nexus_bedrock_tasks.local.nexus.faults import FaultInjector
from nexus_bedrock_tasks.local.nexus.server import make_server
from nexus_bedrock_tasks.local.nexus.store import NexusStore
from nexus_bedrock_tasks.local.nexus.web import HEALTH_PATH
from nexus_bedrock_tasks.local.serving import serve_in_background

STARTUP_TIMEOUT_S: Final = 15.0


@dataclass(frozen=True, slots=True)
class LocalNexus:
    """A running local Nexus.

    Attributes:
        url: base URL, e.g. `http://127.0.0.1:41234` (use as `NEXUS_BASE_URL`).
        api_key: the key it accepts.
        app: the FastAPI app (its `state` holds the store and the fault knobs).
    """

    url: str
    api_key: str
    app: FastAPI

    @property
    def faults(self) -> FaultInjector:
        """The fault knobs (see `nexus_bedrock_tasks.local.nexus.faults`).

        Raises:
            RuntimeError: the server was started without `faults=True`.
        """
        injector: FaultInjector | None = self.app.state.faults
        if injector is None:
            raise RuntimeError("start the local Nexus with faults=True to inject faults")
        return injector

    @property
    def store(self) -> NexusStore:
        """The server's database, for assertions that the API cannot express."""
        store: NexusStore = self.app.state.store
        return store


@contextmanager
def run_local_nexus(
    db_path: Path | None = None,
    api_key: str = DEV_KEY,
    port: int = 0,
    faults: bool = False,
    **plan_limits: Unpack[PlanLimitOptions],
) -> Iterator[LocalNexus]:
    """Serve a fresh local Nexus on 127.0.0.1 until the block ends.

    Args:
        db_path: SQLite file; `None` keeps data in memory (gone when the block ends).
        api_key: the key the server accepts.
        port: TCP port; 0 picks a free one.
        faults: enable fault injection (`nexus.faults`, `/_faults`).
        **plan_limits: `max_agents`, `monthly_trace_limit`, to exercise 403/429.

    Yields:
        The running server; it answers `/health` before this yields.

    Raises:
        ValueError: `api_key` does not look like `nxs_<key>`.
        RuntimeError: the server did not come up within `STARTUP_TIMEOUT_S`.
    """
    app = create_app(db_path, api_key, faults=faults, **plan_limits)
    server = make_server(app, quiet=True)
    with serve_in_background(
        server,
        DEFAULT_HOST,
        port,
        name="local Nexus",
        health_path=HEALTH_PATH,
        startup_timeout_s=STARTUP_TIMEOUT_S,
    ) as url:
        yield LocalNexus(url=url, api_key=api_key, app=app)
