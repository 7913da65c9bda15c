"""The statistics of the benchmarks: medians, spreads and costs with bootstrap intervals."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


def median(samples: Sequence[float]) -> float:
    """The median; raises ValueError for no samples."""
    if not samples:
        raise ValueError("no samples")
    return float(statistics.median(samples))


def describe(samples: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """n, median, p10, p90, min and max of timing samples (seconds or any unit)."""
    ordered = sorted(samples)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]

    return {
        "n": len(ordered),
        "median": round(median(ordered), digits),
        "p10": round(at(0.1), digits),
        "p90": round(at(0.9), digits),
        "min": round(ordered[0], digits),
        "max": round(ordered[-1], digits),
    }


@dataclass(frozen=True)
class Measure:
    """One timed run: wall-clock seconds, and this process's CPU seconds (all threads)."""

    wall_s: float
    cpu_s: float


def walls(measures: Sequence[Measure]) -> list[float]:
    """The wall-clock seconds of `measures`."""
    return [m.wall_s for m in measures]


def cpus(measures: Sequence[Measure]) -> list[float]:
    """The CPU seconds of `measures`."""
    return [m.cpu_s for m in measures]


def median_difference_ci(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 8
) -> tuple[float, float]:
    """A 90 % bootstrap interval of the cost of `a` over `b`: how far noise moves it.

    Equal lengths mean paired samples (round i of `a` ran next to round i of `b`), and
    the pairs are resampled; otherwise each side is resampled on its own.
    """
    import random

    draw = random.Random(seed)
    if len(a) == len(b):
        pairs = list(zip(a, b, strict=True))
        differences = sorted(
            median([x - y for x, y in draw.choices(pairs, k=len(pairs))]) for _ in range(resamples)
        )
    else:
        differences = sorted(
            median(draw.choices(a, k=len(a))) - median(draw.choices(b, k=len(b)))
            for _ in range(resamples)
        )
    return differences[int(0.05 * resamples)], differences[int(0.95 * resamples) - 1]


def median_cost(a: Sequence[float], b: Sequence[float]) -> float:
    """What `a` costs over `b`: the median of the per-round differences when the samples
    are paired (equal lengths, interleaved rounds: drift in machine load cancels within
    a pair), else median(a) − median(b)."""
    if len(a) == len(b):
        return median([x - y for x, y in zip(a, b, strict=True)])
    return median(a) - median(b)
