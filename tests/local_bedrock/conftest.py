"""Fixtures for the emulator tests: servers on free ports and stock boto3 clients."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config

from nexus_bedrock_tasks.local.bedrock.pytest_plugin import (  # noqa: F401 - fixtures
    bedrock_client,
    bedrock_emulator,
)
from nexus_bedrock_tasks.local.bedrock.testing import run_emulator
from tests.local_bedrock.emulator_helpers import DEPLOYED_AGENTS, RECORDINGS, TEST_AGENTS

NO_RETRIES = Config(retries={"total_max_attempts": 1, "mode": "standard"})


@pytest.fixture(scope="session")
def emulator_url() -> Iterator[str]:
    """The emulator serving deployments/agents.yaml, with tests/recordings replayable."""
    with run_emulator(DEPLOYED_AGENTS, replay_dir=RECORDINGS) as url:
        yield url


@pytest.fixture(scope="session")
def bedrock_emulator_agents() -> Path:
    """The plugin's emulator serves the tests' agents file."""
    return TEST_AGENTS


@pytest.fixture(scope="session")
def test_emulator_url(request: pytest.FixtureRequest) -> str:
    """The emulator serving this folder's agents.yaml (the importable plugin fixture)."""
    url: str = request.getfixturevalue("bedrock_emulator")
    return url


ClientFactory = Callable[..., Any]


@pytest.fixture
def make_client() -> Iterator[ClientFactory]:
    """Stock boto3 clients (no retries unless `config` says so), closed after the test."""
    clients: list[Any] = []

    def make(url: str, config: Config = NO_RETRIES, region: str = "us-east-1") -> Any:
        client = boto3.client(
            "bedrock-agent-runtime",
            endpoint_url=url,
            region_name=region,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            config=config,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: ClientFactory, emulator_url: str) -> Any:
    """A client of the deployments/agents.yaml emulator."""
    return make_client(emulator_url)


@pytest.fixture
def test_client(make_client: ClientFactory, test_emulator_url: str) -> Any:
    """A client of the tests' agents.yaml emulator."""
    return make_client(test_emulator_url)


@pytest.fixture
def session_id() -> str:
    """A fresh session id, so that sessions and fault counters never leak between tests."""
    return f"test-{uuid.uuid4().hex[:16]}"
