"""Defaults and plan limits of the local Nexus server (no FastAPI import, so the CLI stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from typing_extensions import TypedDict

DEV_KEY: Final = "nxs_local_dev_key"
"""The API key the local server accepts unless told otherwise (documented, not a secret)."""

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8765
KEY_PREFIX: Final = "nxs_"

FREE_PLAN_MAX_AGENTS: Final = 1
FREE_PLAN_MONTHLY_TRACES: Final = 1000
UPGRADE_URL: Final = "/dashboard/billing"


class PlanLimitOptions(TypedDict, total=False):
    """Keyword options of `create_app` and `run_local_nexus` that emulate a plan's limits."""

    max_agents: int | None
    monthly_trace_limit: int | None


@dataclass(frozen=True, slots=True)
class PlanLimits:
    """Limits of the emulated account; `None` means unlimited (a paid plan).

    Attributes:
        max_agents: distinct agent names allowed; one more answers 403.
        monthly_trace_limit: traces received this calendar month (UTC) before 429.
    """

    max_agents: int | None = None
    monthly_trace_limit: int | None = None

    @classmethod
    def free(cls) -> PlanLimits:
        """The hosted service's free plan: one agent, 1,000 traces a month."""
        return cls(FREE_PLAN_MAX_AGENTS, FREE_PLAN_MONTHLY_TRACES)
