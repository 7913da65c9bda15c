"""How an evaluation reports progress to whoever runs it in-process (the CLI's bar)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar

logger = logging.getLogger(__name__)

ProgressListener = Callable[[int, int, int], None]
"""Called with (cases done, cases in total, cases passed) after every case."""

progress_listener: ContextVar[ProgressListener | None] = ContextVar(
    "nexus_bedrock_eval_progress", default=None
)


def report_progress(done: int, total: int, passed: int) -> None:
    """Tell the listener, if any; a failing listener never stops the evaluation."""
    listener = progress_listener.get()
    if listener is not None:
        try:
            listener(done, total, passed)
        except Exception:
            logger.exception("the progress listener failed; progress is no longer reported")
            progress_listener.set(None)
