"""Every knob of the project in one place, read from the environment.

Nexus settings use the ``NEXUS_`` prefix (``NEXUS_API_KEY``, ``NEXUS_BASE_URL``,
``NEXUS_AGENT_ID``); everything else uses ``NEXUS_BEDROCK_``. AWS settings are the
standard ones (``AWS_REGION``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL_BEDROCK_AGENT_RUNTIME``)
and are read by botocore itself.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_NEXUS_BASE_URL = "https://nexus.keylightdigital.dev"
DEFAULT_NEXUS_AGENT_NAME = "bedrock-agent"


def user_data_dir() -> Path:
    """Where the project keeps its outbox, logs and pid files (XDG data dir)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "nexus-bedrock"


class NexusSettings(BaseSettings):
    """How to reach Nexus and what to send it."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_", extra="ignore")

    api_key: SecretStr | None = Field(default=None, description="Bearer key, `nxs_...`.")
    base_url: str = Field(default=DEFAULT_NEXUS_BASE_URL, description="Nexus service root.")
    agent_id: str = Field(
        default=DEFAULT_NEXUS_AGENT_NAME,
        description="Nexus agent *name* every trace is filed under.",
    )
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0
    max_retries: int = Field(default=5, ge=0, description="Retries of transient errors.")
    max_payload_chars: int = Field(
        default=16_000, ge=256, description="Span input/output/error are truncated to this."
    )
    redact_patterns: list[str] = Field(
        default_factory=list, description="Extra regexes whose matches are replaced by [REDACTED]."
    )
    otlp_endpoint: str | None = Field(
        default=None, description="Optional OTLP/HTTP JSON endpoint (`.../v1/traces`)."
    )
    delivery_delay_ms: float = Field(
        default=200.0,
        ge=0,
        le=60_000,
        description=(
            "After a quiet spell, spooled spans wait this long for company before they go "
            "(delivery then runs after the agent run's busy end, not during it); 0 sends "
            "at once. New traces, flushes, full batches and work already in flight do not "
            "wait."
        ),
    )


class BedrockTasksSettings(BaseSettings):
    """Settings of the flows and tasks themselves."""

    model_config = SettingsConfigDict(env_prefix="NEXUS_BEDROCK_", extra="ignore")

    outbox: Path = Field(
        default_factory=lambda: user_data_dir() / "outbox.sqlite3",
        description="SQLite spool of traces/spans not yet acknowledged by Nexus.",
    )
    tool_ledger: Path = Field(
        default_factory=lambda: user_data_dir() / "tool-ledger.sqlite3",
        description="Results of tools already run, for exactly-once execution.",
    )
    flush_timeout_s: float = Field(default=10.0, ge=0)
    export: bool = Field(default=True, description="Mirror invocations into Nexus.")
    max_return_control_rounds: int = Field(default=10, ge=0)
    aws_max_attempts: int = Field(default=5, ge=1, description="tenacity attempts before stream.")
    aws_backoff_max_s: float = Field(default=20.0, gt=0, description="Longest retry wait.")
    aws_connect_timeout_s: float = Field(default=10.0, gt=0)
    aws_read_timeout_s: float = Field(default=120.0, gt=0)
    stream_retries: int = Field(
        default=2, ge=0, description="Re-invocations after a transient in-stream error."
    )
    confirmation_timeout_s: int = Field(
        default=3600, ge=1, description="How long a USER_CONFIRMATION call waits for a person."
    )
    trace_id_wait_s: float = Field(
        default=2.0, ge=0, description="How long finalize waits to learn the Nexus trace id."
    )
    # USD per 1k tokens: {"model id prefix": [input, output]}.
    model_prices: dict[str, tuple[float, float]] = Field(
        default_factory=lambda: {
            "anthropic.claude-3-haiku": (0.00025, 0.00125),
            "anthropic.claude-3-5-haiku": (0.0008, 0.004),
            "anthropic.claude-3-sonnet": (0.003, 0.015),
            "anthropic.claude-3-5-sonnet": (0.003, 0.015),
            "anthropic.claude-3-opus": (0.015, 0.075),
            "amazon.nova-micro": (0.000035, 0.00014),
            "amazon.nova-lite": (0.00006, 0.00024),
            "amazon.nova-pro": (0.0008, 0.0032),
        }
    )
    session_warn_turns: int = Field(
        default=20, ge=1, description="The session flow warns when a session has more turns."
    )
    session_warn_tokens: int = Field(
        default=100_000,
        ge=1,
        description="The session flow warns when a session's turns used more tokens in total.",
    )
    eval_results_dir: Path = Field(
        default_factory=lambda: user_data_dir() / "evals",
        description="Where an evaluation writes its results JSONL when given no `out`.",
    )


_SETTINGS_INPUTS = ("XDG_DATA_HOME", "HOME")


def _environment(prefix: str, names: tuple[str, ...] = ()) -> tuple[tuple[str, str], ...]:
    return tuple(
        sorted(
            (name, value)
            for name, value in os.environ.items()
            if name.startswith(prefix) or name in names
        )
    )


def task_settings() -> BedrockTasksSettings:
    """`BedrockTasksSettings()`, made again only when the environment it reads changed.

    Building settings parses the environment (~1 ms); a batch builds them per case.
    Treat the result as read-only: it is shared.
    """
    return _task_settings_for(_environment("NEXUS_BEDROCK_", _SETTINGS_INPUTS))


@functools.lru_cache(maxsize=8)
def _task_settings_for(_environment: tuple[tuple[str, str], ...]) -> BedrockTasksSettings:
    return BedrockTasksSettings()


def nexus_settings() -> NexusSettings:
    """`NexusSettings()`, made again only when a ``NEXUS_*`` variable changed (the flow
    hooks read it on every run). Treat the result as read-only: it is shared."""
    return _nexus_settings_for(_environment("NEXUS_"))


@functools.lru_cache(maxsize=8)
def _nexus_settings_for(_environment: tuple[tuple[str, str], ...]) -> NexusSettings:
    return NexusSettings()


_ENV_PREFIXES = {
    model.__name__: model.model_config.get("env_prefix", "")
    for model in (NexusSettings, BedrockTasksSettings)
}


def settings_problem(exc: ValidationError) -> str | None:
    """What is wrong in the environment, naming each variable, when `exc` came from
    reading `NexusSettings` or `BedrockTasksSettings`; None for any other model.

    Example:
        >>> settings_problem(exc)
        "NEXUS_DELIVERY_DELAY_MS='-5': Input should be greater than or equal to 0 (...)"
    """
    prefix = _ENV_PREFIXES.get(exc.title)
    if prefix is None:
        return None
    problems = []
    for error in exc.errors():
        field = str(error["loc"][0]) if error["loc"] else ""
        name = prefix + field.upper()
        problems.append(f"{name}={error.get('input')!r}: {error['msg']}")
    return "; ".join(problems) + " (fix or unset the variable; see nexus_bedrock_tasks/settings.py)"
