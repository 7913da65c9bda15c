"""The NexusCredentials Prefect block: a secret key and a client built from it."""

from __future__ import annotations

from nexus_bedrock_tasks.credentials import NexusCredentials
from tests.nexus.fake_nexus import API_KEY


def test_key_is_secret_and_reaches_the_client() -> None:
    block = NexusCredentials(api_key=API_KEY, base_url="http://nexus.local:8787/")
    assert API_KEY not in repr(block)
    settings = block.settings()
    assert settings.agent_id == "bedrock-agent"
    assert settings.api_key is not None and settings.api_key.get_secret_value() == API_KEY
    with block.get_client() as client:
        assert client.base_url == "http://nexus.local:8787"
        assert client.redactor.redact(API_KEY) == "[REDACTED]"
