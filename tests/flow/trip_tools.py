"""Tools for the emulator's TRIP000001 agent that log every execution (process tests).

`TRIP_TOOL_LOG` names the log file; `TRIP_SLOW_HOTELS` makes find_hotels sleep that
many seconds (so a test can kill the process mid-tool).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from nexus_bedrock_tasks import tool


def _log(line: str) -> None:
    with Path(os.environ["TRIP_TOOL_LOG"]).open("a") as handle:
        handle.write(line + "\n")


@tool(action_group="calendar", function="check_dates")
def check_dates(city: str) -> str:
    """Free dates for a city."""
    _log(f"check_dates {city}")
    return "Free from 12 to 15 June, 3 nights"


@tool(action_group="hotels", function="find_hotels")
def find_hotels(city: str, nights: int) -> str:
    """Hotels for a stay."""
    _log(f"find_hotels start {city} {nights}")
    time.sleep(float(os.environ.get("TRIP_SLOW_HOTELS", "0")))
    _log(f"find_hotels done {city} {nights}")
    return "Hotel Roma, Albergo Sole"


@tool(action_group="weather", function="get_forecast")
def get_forecast(city: str) -> str:
    """A forecast."""
    _log(f"get_forecast {city}")
    return "sunny"


@tool(action_group="booking", api_path="/reservations", http_method="POST")
def reserve(city: str, nights: int, guests: int = 1) -> dict[str, object]:
    """A reservation (an OpenAPI action answered with apiResult)."""
    _log(f"reserve {city} {nights} {guests}")
    return {"reservationId": "R-1001", "guests": guests}
