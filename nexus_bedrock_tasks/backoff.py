"""Jittered exponential backoff with a private random generator.

tenacity's `wait_random_exponential` draws from the global `random` module; retries run
in background threads, where that would disturb the global state user code (and test
tools like hypothesis) depend on.
"""

from __future__ import annotations

import random

from tenacity import RetryCallState
from tenacity.wait import wait_exponential


class jittered_exponential(wait_exponential):  # noqa: N801 - tenacity's naming style
    """Full jitter: uniform in [0, multiplier * 2**attempt], capped at `max`."""

    def __init__(self, multiplier: float = 1, max: float = 60) -> None:  # noqa: A002
        super().__init__(multiplier=multiplier, max=max)
        self._rng = random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        return self._rng.uniform(0, super().__call__(retry_state))
