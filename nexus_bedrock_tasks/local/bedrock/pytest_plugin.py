"""Pytest fixtures that start the emulator on a free port; import them into a conftest.py.

Example:
    # conftest.py
    from nexus_bedrock_tasks.local.bedrock.pytest_plugin import (  # noqa: F401
        bedrock_client,
        bedrock_emulator,
        bedrock_emulator_agents,
    )

    def test_demo(bedrock_client):
        response = bedrock_client.invoke_agent(
            agentId="DEMO000001", agentAliasId="TSTALIASID", sessionId="s-1",
            inputText="What's the weather in Paris?", enableTrace=True,
        )

Override ``bedrock_emulator_agents`` (session scope) to serve another agents file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from nexus_bedrock_tasks.local.bedrock.testing import run_emulator


@pytest.fixture(scope="session")
def bedrock_emulator_agents() -> Path | None:
    """The agents file the emulator serves (None: ``deployments/agents.yaml``)."""
    return None


@pytest.fixture(scope="session")
def bedrock_emulator(bedrock_emulator_agents: Path | None) -> Iterator[str]:
    """The endpoint URL of an emulator running for the whole test session."""
    with run_emulator(bedrock_emulator_agents) as url:
        yield url


@pytest.fixture
def bedrock_client(bedrock_emulator: str) -> Iterator[Any]:
    """A stock boto3 ``bedrock-agent-runtime`` client of the emulator, closed afterwards."""
    client = boto3.client(
        "bedrock-agent-runtime",
        endpoint_url=bedrock_emulator,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    yield client
    client.close()
