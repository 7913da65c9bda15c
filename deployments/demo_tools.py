"""Local tools of the demo agent DEMO000001 (its `weather` action group returns control).

Deterministic on purpose: the demo and the end-to-end tests check the answer quotes this.
"""

from __future__ import annotations

from nexus_bedrock_tasks import tool

FORECASTS = {
    "paris": "light rain, 14°C",
    "london": "overcast, 12°C",
    "tokyo": "sunny, 21°C",
    "lisbon": "sunny, 24°C",
}


@tool(action_group="weather", function="get_forecast")
def get_forecast(city: str) -> str:
    """Tomorrow's forecast for `city`."""
    forecast = FORECASTS.get(city.strip().lower(), "clear skies, 18°C")
    return f"Forecast for {city}: {forecast}"
