"""Cost of model calls from a per-model price table (USD per 1k tokens)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from nexus_bedrock_tasks.bedrock.model import ModelCall

PriceTable = Mapping[str, tuple[float, float]]

# Cross-region inference profiles prefix the model id with a geography.
_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "us-gov.", "global.")


def _normalise(model: str) -> str:
    for prefix in _PROFILE_PREFIXES:
        if model.startswith(prefix):
            model = model[len(prefix) :]
            break
    # rawResponse reports Anthropic models without the provider prefix.
    if model.startswith("claude-"):
        model = f"anthropic.{model}"
    return model


def price_for(model: str | None, prices: PriceTable) -> tuple[float, float] | None:
    """(input, output) USD per 1k tokens for `model`: the longest matching prefix wins."""
    if not model:
        return None
    name = _normalise(model)
    matches = [key for key in prices if name.startswith(key)]
    return prices[max(matches, key=len)] if matches else None


def cost_usd(calls: Iterable[ModelCall], prices: PriceTable) -> float | None:
    """Total cost of `calls`; None when any call that used tokens has no known price."""
    total = 0.0
    for call in calls:
        if call.usage is None or call.usage.total_tokens == 0:
            continue
        price = price_for(call.model, prices)
        if price is None:
            return None
        total += call.usage.input_tokens / 1000 * price[0]
        total += call.usage.output_tokens / 1000 * price[1]
    return round(total, 8)
