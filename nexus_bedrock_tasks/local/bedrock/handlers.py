"""Built-in Python handlers that stand in for an action group's Lambda function.

A handler takes the function's parameters, already converted to their declared types, and
returns the text the Lambda would put in ``responseBody.TEXT.body``. An exception in a
handler is what a failing Lambda is: the stream ends with ``dependencyFailedException``.
Results are derived from the arguments only, so every run gives the same answer.

In YAML, ``handler:`` names a built-in below (``get_forecast``) or any importable
callable (``package.module:function``).
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Mapping

Handler = Callable[[Mapping[str, object]], str]

_CONDITIONS = ("sunny", "partly cloudy", "overcast", "light rain", "windy", "clear skies")
_USD_RATES = {"USD": 1.0, "EUR": 0.92, "GBP": 0.79, "JPY": 151.0, "CHF": 0.88, "CAD": 1.36}


def _digest(*parts: object) -> int:
    text = "|".join(str(part).strip().lower() for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def get_forecast(params: Mapping[str, object]) -> str:
    """A stable made-up forecast for ``city``."""
    city = str(params["city"])
    seed = _digest(city)
    condition = _CONDITIONS[seed % len(_CONDITIONS)]
    high = 8 + seed % 23
    return f"{condition.capitalize()}, high of {high}°C, low of {high - 7}°C"


def convert_currency(params: Mapping[str, object]) -> str:
    """Convert ``amount`` from ``from_currency`` to ``to_currency`` at fixed rates.

    Raises:
        ValueError: an unknown currency code (the "Lambda" fails).
    """
    amount = float(str(params["amount"]))
    source = str(params["from_currency"]).upper()
    target = str(params["to_currency"]).upper()
    for code in (source, target):
        if code not in _USD_RATES:
            raise ValueError(f"unknown currency {code}; known: {', '.join(sorted(_USD_RATES))}")
    converted = amount / _USD_RATES[source] * _USD_RATES[target]
    return f"{amount:.2f} {source} = {converted:.2f} {target}"


def book_hotel(params: Mapping[str, object]) -> str:
    """Pretend to book ``nights`` nights in ``city``; the confirmation code is stable."""
    city = str(params["city"])
    nights = int(str(params["nights"]))
    code = f"HB-{_digest(city, nights) % 1_000_000:06d}"
    return f"Booked {nights} night(s) in {city}, confirmation {code}"


def fail(params: Mapping[str, object]) -> str:
    """Always fails, to exercise a broken Lambda.

    Raises:
        RuntimeError: always.
    """
    raise RuntimeError(f"handler failed on purpose with {dict(params)}")


BUILTIN_HANDLERS: dict[str, Handler] = {
    "get_forecast": get_forecast,
    "convert_currency": convert_currency,
    "book_hotel": book_hotel,
    "fail": fail,
}


def resolve_handler(name: str) -> Handler:
    """The callable a YAML ``handler:`` value names.

    Raises:
        ValueError: no such built-in, module or attribute, or not callable.
    """
    if ":" not in name:
        try:
            return BUILTIN_HANDLERS[name]
        except KeyError:
            known = ", ".join(sorted(BUILTIN_HANDLERS))
            raise ValueError(f"no built-in handler {name!r}; built-ins: {known}") from None
    module_name, _, attribute = name.partition(":")
    try:
        target = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import handler {name!r}: {exc}") from exc
    if not callable(target):
        raise ValueError(f"handler {name!r} is not callable")
    handler: Handler = target
    return handler
