"""Prefect blocks: where a deployment keeps its Nexus key (AWS uses prefect-aws's block).

The only module of the library that imports Prefect for credentials; the Nexus client
itself works without Prefect.
"""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field, HttpUrl, SecretStr

from nexus_bedrock_tasks.nexus.client import NexusClient
from nexus_bedrock_tasks.settings import (
    DEFAULT_NEXUS_AGENT_NAME,
    DEFAULT_NEXUS_BASE_URL,
    NexusSettings,
)


class NexusCredentials(Block):
    """API key and address of a Nexus service, stored as a Prefect block.

    Attributes:
        api_key: the bearer key (``nxs_...``), kept secret in the Prefect UI and logs.
        base_url: the Nexus service root.
        agent_name: the Nexus agent name traces are filed under.

    Example:
        >>> NexusCredentials(api_key="nxs_...").save("nexus")
        >>> with NexusCredentials.load("nexus").get_client() as client:
        ...     page = client.list_traces(limit=5)
    """

    _block_type_name = "Nexus Credentials"
    _documentation_url = HttpUrl("https://nexus.keylightdigital.dev")

    api_key: SecretStr = Field(description="Nexus API key (`nxs_...`).")
    base_url: str = Field(default=DEFAULT_NEXUS_BASE_URL, description="Nexus service root.")
    agent_name: str = Field(
        default=DEFAULT_NEXUS_AGENT_NAME, description="Nexus agent name traces are filed under."
    )

    def settings(self) -> NexusSettings:
        """`NexusSettings` from the environment, with this block's key, URL and agent name."""
        return NexusSettings(api_key=self.api_key, base_url=self.base_url, agent_id=self.agent_name)

    def get_client(self) -> NexusClient:
        """A `NexusClient` for this service; close it (or use it as a context manager)."""
        return NexusClient(self.settings())
