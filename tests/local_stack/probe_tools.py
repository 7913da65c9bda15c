"""A `weather.get_forecast` tool for DEMO000001 that reports the process it runs in.

It writes, to the file named by ``PROBE_FILE``, what the resident runner's child must have
taken from its caller: environment, working directory, Prefect's settings, warning filters. With
``PROBE_SLEEP_S`` it then sleeps, so a test can interrupt a run that is under way.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path

from nexus_bedrock_tasks import tool


@tool(action_group="weather", function="get_forecast")
def get_forecast(city: str) -> str:
    """Record this process's view of its caller, then answer."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    resident = sys.modules.get("nexus_bedrock_tasks.local.resident")
    report = {
        "pid": os.getpid(),
        "forked_from": getattr(resident, "FORKED_FROM", None),
        "cwd": os.getcwd(),
        "nexus_agent_id": os.environ.get("NEXUS_AGENT_ID"),
        "prefect_api_url": settings.api.url,
        "prefect_client_max_retries": settings.client.max_retries,
        "warnoptions": sys.warnoptions,
        "user_warning": _fate(UserWarning),
        "deprecation_warning": _fate(DeprecationWarning),
    }
    Path(os.environ["PROBE_FILE"]).write_text(json.dumps(report))
    time.sleep(float(os.environ.get("PROBE_SLEEP_S", "0")))
    return f"Forecast for {city}: sunny"


def _fate(category: type[Warning]) -> str:
    """What the warning filters do with a `category` warning raised here."""
    with warnings.catch_warnings(record=True) as seen:
        try:
            warnings.warn("probe", category, stacklevel=1)
        except category:
            return "error"
    return "shown" if seen else "ignored"
