"""Fairness statistics on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedfm.report.fairness import fairness_stats, worst10_mean


def test_ten_clients_worst10_is_the_minimum() -> None:
    # Prepare
    acc = {c: 0.1 * (c + 1) for c in range(10)}  # 0.1 ... 1.0

    # Execute
    stats = fairness_stats(acc)

    # Assert
    assert stats["num_clients"] == 10
    assert stats["worst10"] == pytest.approx(0.1)
    assert stats["min"] == pytest.approx(0.1)
    assert stats["max"] == pytest.approx(1.0)
    assert stats["mean"] == pytest.approx(0.55)
    assert stats["weighted_mean"] == pytest.approx(0.55)
    # Population std of 0.1..1.0: sqrt(mean of squared deviations) = sqrt(0.0825).
    assert stats["std"] == pytest.approx(math.sqrt(0.0825))
    assert "share_worse_than_local" not in stats


@pytest.mark.parametrize(
    ("n", "k"), [(1, 1), (9, 1), (10, 1), (11, 2), (20, 2), (30, 3), (31, 4), (100, 10)]
)
def test_worst10_averages_ceil_of_a_tenth(n: int, k: int) -> None:
    # Prepare
    values = np.arange(n, dtype=np.float64)

    # Execute
    worst = worst10_mean(values)

    # Assert: the k smallest are 0..k-1, whose mean is (k - 1) / 2.
    assert worst == pytest.approx((k - 1) / 2)


def test_weighted_mean_with_unequal_weights() -> None:
    # Prepare
    acc = {"0": 0.9, "1": 0.5, "2": 0.2}
    num_examples = {0: 100, 1: 300, 2: 600}  # int keys match the string keys of acc

    # Execute
    stats = fairness_stats(acc, num_examples=num_examples)

    # Assert: (0.9*100 + 0.5*300 + 0.2*600) / 1000 = 0.36
    assert stats["weighted_mean"] == pytest.approx(0.36)
    assert stats["mean"] == pytest.approx(1.6 / 3)


def test_share_worse_than_local_counts_strictly_below_over_common_clients() -> None:
    # Prepare
    acc = {1: 0.8, 2: 0.6, 3: 0.7, 4: 0.5}
    local_only = {"1": 0.9, "2": 0.6, "3": 0.75, "99": 1.0}  # 2 ties, 4 and 99 not shared

    # Execute
    stats = fairness_stats(acc, local_only=local_only)

    # Assert: clients 1 and 3 of the 3 shared ones are strictly worse off.
    assert stats["share_worse_than_local"] == pytest.approx(2 / 3)


def test_single_client() -> None:
    # Execute
    stats = fairness_stats({7: 0.42})

    # Assert
    assert stats["worst10"] == stats["mean"] == stats["min"] == stats["max"] == 0.42
    assert stats["std"] == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"acc": {}}, "at least one client"),
        ({"acc": {1: 0.5, 2: 0.6}, "num_examples": {1: 10}}, "lacks clients"),
        ({"acc": {1: 0.5}, "num_examples": {1: 0}}, "positive"),
        ({"acc": {1: 0.5}, "local_only": {2: 0.9}}, "no client"),
        ({"acc": {1: 0.5, "1": 0.6}}, "twice"),
    ],
)
def test_invalid_inputs_raise_clear_value_errors(kwargs: dict, match: str) -> None:
    # Execute / Assert
    with pytest.raises(ValueError, match=match):
        fairness_stats(**kwargs)
