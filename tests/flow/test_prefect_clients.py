"""`reuse_prefect_clients`: flow runs started inside share Prefect's API clients."""

from __future__ import annotations

from typing import Any

import pytest
from prefect import flow
from prefect.context import FlowRunContext

from nexus_bedrock_tasks import reuse_prefect_clients
from tests.flow.conftest import PREFECT_SOCKET_WARNINGS, LoopThread

pytestmark = PREFECT_SOCKET_WARNINGS


@flow(name="which-client")
async def which_client() -> Any:
    context = FlowRunContext.get()
    assert context is not None
    return context.client


def test_flow_runs_inside_share_one_client_and_outside_make_their_own(
    flow_loop: LoopThread,
) -> None:
    async def calls() -> list[Any]:
        async with reuse_prefect_clients():
            inside = [await which_client(), await which_client()]
        return [*inside, await which_client(), await which_client()]

    first, second, third, fourth = flow_loop.run(calls())
    assert first is second
    # All four are alive here, so distinct objects cannot share an identity.
    assert third is not first and fourth is not third


@pytest.mark.parametrize("nested", [1, 2])
def test_nesting_keeps_the_outer_clients(flow_loop: LoopThread, nested: int) -> None:
    async def calls() -> tuple[Any, Any]:
        async with reuse_prefect_clients():
            outer = await which_client()
            if nested == 2:
                async with reuse_prefect_clients():
                    return outer, await which_client()
            return outer, await which_client()

    outer, inner = flow_loop.run(calls())
    assert outer is inner
