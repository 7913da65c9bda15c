"""Share Prefect's API clients across many flow runs of one long-lived program.

Prefect makes a new async and a new sync HTTP client for every flow run started outside
a client context — each with its own TLS context, plus a server round trip to check the
API version — which costs 50–90 ms of a 2-core machine's time per run, on the event loop.
Subflows and tasks reuse their parent's clients, so a batch evaluation or a session pays
this once; a service or notebook that calls `invoke_agent_flow` again and again pays it
every time unless it opens the clients once with `reuse_prefect_clients`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


@asynccontextmanager
async def reuse_prefect_clients() -> AsyncIterator[None]:
    """Flow runs started inside this block share one pair of Prefect API clients.

    The clients belong to the running event loop: enter the block in the coroutine that
    calls the flows (or a parent of it), on that loop.

    Example:
        >>> async with reuse_prefect_clients():
        ...     for prompt in prompts:
        ...         await invoke_agent_flow("DEMO000001", "TSTALIASID", prompt)
    """
    from prefect.context import AsyncClientContext, SyncClientContext

    async with AsyncClientContext.get_or_create():
        with SyncClientContext.get_or_create():
            yield
