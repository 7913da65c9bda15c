"""Tool registry: signature checks, Bedrock string conversion, outcomes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from nexus_bedrock_tasks.bedrock.model import ReturnControlCall, ReturnControlParameter
from nexus_bedrock_tasks.exceptions import ConfigError
from nexus_bedrock_tasks.tools import (
    ToolArgumentError,
    ToolRegistry,
    call_arguments,
    load_tools,
    run_tool,
    tool,
)


def call(group: str, function: str | None, **params: str) -> ReturnControlCall:
    return ReturnControlCall(
        action_group=group,
        function=function,
        api_path=None,
        http_method=None,
        parameters=tuple(ReturnControlParameter(k, "string", v) for k, v in params.items()),
        request_body=None,
    )


def test_parameters_are_converted_to_annotations() -> None:
    registry = ToolRegistry()

    @tool(action_group="trip", function="plan", registry=registry)
    def plan(
        city: str, days: int, budget: float, refundable: bool, stops: list[str]
    ) -> dict[str, object]:
        return {
            "city": city,
            "days": days,
            "budget": budget,
            "refundable": refundable,
            "stops": stops,
        }

    spec = registry.find(call("trip", "plan"))
    assert spec is not None
    kwargs = call_arguments(
        spec,
        call(
            "trip",
            "plan",
            city="Paris",
            days="3",
            budget="99.5",
            refundable="true",
            stops="Lyon, Nice",
        ),
    )
    assert kwargs == {
        "city": "Paris",
        "days": 3,
        "budget": 99.5,
        "refundable": True,
        "stops": ["Lyon", "Nice"],
    }
    assert asyncio.run(run_tool(spec, kwargs)).startswith('{"city": "Paris", "days": 3')


def test_bad_and_missing_arguments_raise_tool_argument_error() -> None:
    registry = ToolRegistry()

    @tool(action_group="trip", function="plan", registry=registry)
    def plan(city: str, days: int = 1) -> str:
        return city

    spec = registry.find(call("trip", "plan"))
    assert spec is not None
    with pytest.raises(ToolArgumentError, match="'days'"):
        call_arguments(spec, call("trip", "plan", city="Paris", days="three"))
    with pytest.raises(ToolArgumentError, match="city"):
        call_arguments(spec, call("trip", "plan", days="2"))


def test_signature_errors_name_the_parameter_and_fix() -> None:
    registry = ToolRegistry()
    with pytest.raises(ConfigError, match="'city' needs a type annotation"):

        @tool(action_group="w", function="f", registry=registry)
        def untyped(city):  # type: ignore[no-untyped-def]
            return city

    with pytest.raises(ConfigError, match="no \\*args"):

        @tool(action_group="w", function="g", registry=registry)
        def star(*cities: str) -> str:
            return ""

    with pytest.raises(ConfigError, match="exactly one of function= or api_path="):
        tool(action_group="w", registry=registry)(lambda: "")
    with pytest.raises(ConfigError, match="needs http_method"):
        tool(action_group="w", api_path="/x", registry=registry)(lambda: "")


def test_api_tool_reads_request_body_and_async_tools_run() -> None:
    registry = ToolRegistry()

    @tool(action_group="booking", api_path="/book", http_method="POST", registry=registry)
    async def book(hotel: str, nights: int) -> str:
        return f"booked {hotel} for {nights}"

    rc = ReturnControlCall(
        action_group="booking",
        function=None,
        api_path="/book",
        http_method="post",
        parameters=(),
        request_body={"content": {"application/json": {"properties": [
            {"name": "hotel", "type": "string", "value": "Ritz"},
            {"name": "nights", "type": "integer", "value": "2"},
        ]}}},
    )  # fmt: skip
    spec = registry.find(rc)
    assert spec is not None
    assert asyncio.run(run_tool(spec, call_arguments(spec, rc))) == "booked Ritz for 2"


def test_load_tools_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="module not found"):
        load_tools("no_such_module_anywhere")
    with pytest.raises(ConfigError, match="no such file"):
        load_tools(str(tmp_path / "missing.py"))
    broken = tmp_path / "broken_tools.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="importing it failed: RuntimeError: boom"):
        load_tools(str(broken))
