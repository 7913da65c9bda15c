"""The cost estimate of the benchmarks: paired rounds cancel drift in machine load."""

from __future__ import annotations

from benchmarks.stats import median_cost, median_difference_ci


def test_paired_rounds_cancel_drift() -> None:
    drift = [0.0, 0.30, 0.05, 0.50, 0.10, 0.40, 0.20]  # load moving between rounds
    without = [1.0 + d for d in drift]
    with_it = [1.0 + d + 0.01 for d in drift]
    assert abs(median_cost(with_it, without) - 0.01) < 1e-9
    low, high = median_difference_ci(with_it, without)
    assert abs(low - 0.01) < 1e-9 and abs(high - 0.01) < 1e-9


def test_unpaired_samples_compare_medians() -> None:
    assert abs(median_cost([2.0, 3.0, 4.0], [1.0, 1.0]) - 2.0) < 1e-9
    low, high = median_difference_ci([2.0, 3.0, 4.0], [1.0, 1.0])
    assert 1.0 <= low <= high <= 3.0
