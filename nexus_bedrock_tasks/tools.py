"""Local tools that answer Bedrock's returnControl requests.

Example:
    >>> from nexus_bedrock_tasks import tool
    >>> @tool(action_group="weather", function="get_forecast")
    ... def get_forecast(city: str, days: int = 1) -> str:
    ...     return f"Sunny in {city} for {days} day(s)"

Bedrock sends every parameter as a `{name, type, value}` string; values are converted to
the function's annotations. An unknown tool or bad arguments answer the agent with
`REPROMPT`, a tool that raises with `FAILURE`: the session never waits forever.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import json
import sys
import types
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nexus_bedrock_tasks.bedrock.model import ReturnControlCall
from nexus_bedrock_tasks.exceptions import ConfigError

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")
_SUPPORTED = (str, int, float, bool, list, dict)


class ToolArgumentError(ValueError):
    """The agent's parameters do not fit the tool's signature (answered with REPROMPT)."""


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A registered tool."""

    action_group: str
    function: str | None
    api_path: str | None
    http_method: str | None
    fn: Callable[..., Any]
    types: Mapping[str, type]

    @property
    def key(self) -> tuple[str, str]:
        """Registry key: (action group, function) or (action group, "METHOD /path")."""
        return tool_key(self.action_group, self.function, self.api_path, self.http_method)


def tool_key(
    action_group: str, function: str | None, api_path: str | None, http_method: str | None
) -> tuple[str, str]:
    """The registry key of a function or API tool."""
    if function:
        return (action_group, function)
    return (action_group, f"{(http_method or '').upper()} {api_path}")


def _base_type(annotation: Any) -> type | None:
    """str/int/float/bool/list/dict, unwrapping Optional[...] and list[...]."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _base_type(members[0]) if len(members) == 1 else None
    if origin in (list, dict):
        return origin  # type: ignore[no-any-return]
    return annotation if annotation in _SUPPORTED else None


class ToolRegistry:
    """Tools by (action group, function | "METHOD /path")."""

    def __init__(self) -> None:
        self._tools: dict[tuple[str, str], ToolSpec] = {}

    def register(
        self,
        fn: Callable[..., Any],
        *,
        action_group: str,
        function: str | None = None,
        api_path: str | None = None,
        http_method: str | None = None,
    ) -> ToolSpec:
        """Validate `fn`'s signature and register it.

        Raises:
            ConfigError: naming the tool, the parameter and the fix.
        """
        name = getattr(fn, "__qualname__", repr(fn))
        if bool(function) == bool(api_path):
            raise ConfigError(f"@tool on {name}: give exactly one of function= or api_path=")
        if api_path and not http_method:
            raise ConfigError(f"@tool on {name}: api_path={api_path!r} needs http_method=")
        hints = typing.get_type_hints(fn)
        param_types: dict[str, type] = {}
        for param in inspect.signature(fn).parameters.values():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
                raise ConfigError(
                    f"@tool on {name}: parameter {param.name!r} must be passable by name "
                    "(no *args or positional-only parameters)"
                )
            base = _base_type(hints.get(param.name))
            if base is None:
                raise ConfigError(
                    f"@tool on {name}: parameter {param.name!r} needs a type annotation of "
                    "str, int, float, bool, list or dict (optionally Optional[...])"
                )
            param_types[param.name] = base
        spec = ToolSpec(action_group, function, api_path, http_method, fn, param_types)
        self._tools[spec.key] = spec
        return spec

    def find(self, call: ReturnControlCall) -> ToolSpec | None:
        """The tool for a returnControl call, or None."""
        return self._tools.get(
            tool_key(call.action_group, call.function, call.api_path, call.http_method)
        )

    def __len__(self) -> int:
        return len(self._tools)

    def clear(self) -> None:
        """Forget every tool (tests)."""
        self._tools.clear()


default_registry = ToolRegistry()


def tool(
    *,
    action_group: str,
    function: str | None = None,
    api_path: str | None = None,
    http_method: str | None = None,
    registry: ToolRegistry | None = None,
) -> Callable[[F], F]:
    """Register a typed function as the local executor of a RETURN_CONTROL action.

    Example:
        >>> @tool(action_group="weather", function="get_forecast")
        ... def get_forecast(city: str) -> str:
        ...     return f"Sunny in {city}"
    """

    def decorate(fn: F) -> F:
        (registry if registry is not None else default_registry).register(
            fn,
            action_group=action_group,
            function=function,
            api_path=api_path,
            http_method=http_method,
        )
        return fn

    return decorate


def convert_value(raw: Any, target: type, name: str) -> Any:
    """Convert one Bedrock parameter string to `target`."""
    if not isinstance(raw, str) or target is str:
        return raw
    try:
        if target is bool:
            lowered = raw.strip().lower()
            if lowered not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(raw)
            return lowered in ("true", "1", "yes")
        if target is int:
            return int(raw.strip())
        if target is float:
            return float(raw.strip())
        if target is list:
            text = raw.strip()
            return (
                json.loads(text) if text.startswith("[") else [p.strip() for p in text.split(",")]
            )
        if target is dict:
            return json.loads(raw)
    except ValueError as exc:
        raise ToolArgumentError(
            f"parameter {name!r}: cannot read {raw!r} as {target.__name__}"
        ) from exc
    return raw


def call_arguments(spec: ToolSpec, call: ReturnControlCall) -> dict[str, Any]:
    """Keyword arguments for `spec.fn` from the call's parameters and JSON request body.

    Raises:
        ToolArgumentError: a required parameter is missing or a value does not convert.
    """
    raw: dict[str, Any] = {p.name: p.value for p in call.parameters}
    body = (call.request_body or {}).get("content", {})
    for media in body.values() if isinstance(body, Mapping) else ():
        for prop in (media or {}).get("properties", []) or []:
            raw.setdefault(str(prop.get("name")), prop.get("value"))
    signature = inspect.signature(spec.fn)
    accepts_extra = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
    )
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        if name in spec.types:
            kwargs[name] = convert_value(value, spec.types[name], name)
        elif accepts_extra:
            kwargs[name] = value
    missing = [
        p.name
        for p in signature.parameters.values()
        if p.default is inspect.Parameter.empty
        and p.kind is not inspect.Parameter.VAR_KEYWORD
        and p.name not in kwargs
    ]
    if missing:
        raise ToolArgumentError(f"missing required parameter(s): {', '.join(missing)}")
    return kwargs


def _as_text(result: Any) -> str:
    return result if isinstance(result, str) else json.dumps(result, default=str)


def _text_or_raise(text: str | None, exc: Exception | None) -> str:
    if exc is not None:
        raise exc
    assert text is not None  # run_tool_then hands over one of the two
    return text


async def run_tool(spec: ToolSpec, kwargs: Mapping[str, Any]) -> str:
    """Run the tool (a sync tool in a worker thread); the result as the text Bedrock gets."""
    return await run_tool_then(spec, kwargs, _text_or_raise)


async def run_tool_then(
    spec: ToolSpec,
    kwargs: Mapping[str, Any],
    then: Callable[[str | None, Exception | None], T],
) -> T:
    """Run the tool and hand its text (or its exception) to `then`, returning what it returns.

    For a sync tool `then` runs in the tool's worker thread, right after the tool: when the
    awaiting task is torn down meanwhile (SIGTERM), the interpreter still waits for that
    thread at exit, so what `then` records (the tool ledger) is not lost.
    """
    if inspect.iscoroutinefunction(spec.fn):
        try:
            text = _as_text(await typing.cast(Awaitable[Any], spec.fn(**kwargs)))
        except Exception as exc:
            return then(None, exc)
        return then(text, None)

    def run_and_hand_over() -> T:
        try:
            text = _as_text(spec.fn(**kwargs))
        except Exception as exc:
            return then(None, exc)
        return then(text, None)

    return await asyncio.to_thread(run_and_hand_over)


def load_tools(target: str) -> None:
    """Import a module (dotted name or .py path) whose `@tool` functions register themselves.

    Raises:
        ConfigError: the module cannot be found or fails to import.
    """
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target).resolve()
            if not path.is_file():
                raise ConfigError(
                    f"--tools {target}: no such file; pass a module name or a .py path"
                )
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                raise ConfigError(f"--tools {target}: cannot load this file as a Python module")
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(target)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"--tools {target}: module not found ({exc.name}); pass an importable module name "
            "or a path to a .py file"
        ) from exc
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"--tools {target}: importing it failed: {type(exc).__name__}: {exc}"
        ) from exc
