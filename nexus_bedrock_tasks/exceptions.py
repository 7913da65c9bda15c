"""Typed errors: one per thing a caller handles differently."""

from __future__ import annotations


class NexusBedrockError(Exception):
    """Base of every error this package raises on purpose."""


class StreamDecodeError(NexusBedrockError):
    """Raw InvokeAgent bytes are not a valid AWS event stream (bad framing or CRC)."""


class AgentStreamError(NexusBedrockError):
    """A modelled exception arrived inside the InvokeAgent stream.

    Attributes:
        code: the event name, e.g. ``throttlingException``.
        transient: whether re-invoking the turn may succeed.
    """

    TRANSIENT_CODES = frozenset(
        {
            "throttlingException",
            "internalServerException",
            "serviceQuotaExceededException",
            "dependencyFailedException",
            "badGatewayException",
            "modelNotReadyException",
        }
    )

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.transient = code in self.TRANSIENT_CODES


class NexusError(NexusBedrockError):
    """Nexus answered with an error that retrying will not fix."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Nexus {status_code}: {message}")
        self.status_code = status_code
        self.message = message


class NexusAuthError(NexusError):
    """401/403 from Nexus: the API key is wrong, missing or not allowed."""


class NexusQuotaError(NexusError):
    """A plan limit (agents or monthly traces): data stays in the outbox."""


class NexusValidationError(NexusError):
    """400 from Nexus, with the server's per-field messages."""

    def __init__(self, status_code: int, message: str, fields: dict[str, str]) -> None:
        super().__init__(status_code, message)
        self.fields = fields


class NexusNotFoundError(NexusError):
    """404 from Nexus (e.g. a trace id it does not know)."""


class ConfigError(NexusBedrockError):
    """Bad user input: names the field and how to fix it."""
