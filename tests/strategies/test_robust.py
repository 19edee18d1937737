"""Median, trimmed mean, Krum / Multi-Krum and NormBound: crafted cases and properties."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.messages import FitResult
from fedfm.state import State, global_norm
from fedfm.strategies.base import ClientSampler, aggregate
from fedfm.strategies.fedavg import FedAvg
from fedfm.strategies.fedopt import FedAdam
from fedfm.strategies.robust import (
    Krum,
    Median,
    MultiKrum,
    NormBound,
    TrimmedMean,
    clip_update,
    flatten_states,
    krum,
    krum_scores,
    krum_select,
    median,
    multi_krum,
    trimmed_mean,
    unflatten,
)

SAMPLER = ClientSampler(clients_per_round=3)


def _states(rows: Sequence[Sequence[float]]) -> list[State]:
    # Two keys so that flattening and unflattening are exercised.
    return [
        {
            "a": torch.tensor(r[:1], dtype=torch.float32),
            "b.weight": torch.tensor(r[1:], dtype=torch.float32),
        }
        for r in rows
    ]


def _vec(state: State) -> list[float]:
    return torch.cat([state["a"], state["b.weight"]]).tolist()


def test_flatten_round_trip_keeps_names_shapes_dtypes() -> None:
    # Prepare
    s = {"x": torch.arange(6.0).reshape(2, 3), "y": torch.tensor([1.5], dtype=torch.float64)}
    # Execute
    matrix, spec = flatten_states([s, s])
    back = unflatten(matrix[1], spec)
    # Assert
    assert matrix.shape == (2, 7) and matrix.dtype == torch.float64
    assert list(back) == ["x", "y"]
    assert torch.equal(back["x"], s["x"]) and back["y"].dtype == torch.float64


def test_median_crafted_odd_and_even() -> None:
    odd = median(_states([[1, 10, 0], [2, -5, 0], [100, 0, 0]]))
    even = median(_states([[1, 0, 0], [3, 0, 0], [10, 0, 0], [4, 0, 0]]))
    assert _vec(odd) == [2, 0, 0]
    assert _vec(even) == [3.5, 0, 0]


def test_trimmed_mean_crafted() -> None:
    # Prepare: n = 5, beta = 0.2 drops one value from each end per coordinate.
    rows = [[1, -100, 0], [2, 1, 0], [3, 2, 0], [4, 3, 0], [100, 4, 0]]
    # Execute
    trimmed = trimmed_mean(_states(rows), 0.2)
    untrimmed = trimmed_mean(_states(rows), 0.19)  # floor(0.19 * 5) = 0
    # Assert
    assert _vec(trimmed) == pytest.approx([3.0, 2.0, 0.0])
    assert _vec(untrimmed) == pytest.approx([22.0, -18.0, 0.0])
    with pytest.raises(ValueError, match="beta"):
        trimmed_mean(_states(rows), 0.5)


def _honest_and_outliers() -> list[State]:
    g = torch.Generator().manual_seed(0)
    honest = [torch.tensor([1.0, 1.0, 1.0]) + 0.05 * torch.randn(3, generator=g) for _ in range(5)]
    outliers = [torch.tensor([100.0, -100.0, 50.0]), torch.tensor([-50.0, 80.0, 0.0])]
    # Outliers at positions 1 and 4, so that position alone cannot explain a pass.
    vecs = [honest[0], outliers[0], honest[1], honest[2], outliers[1], honest[3], honest[4]]
    return [{"a": v[:1].clone(), "b.weight": v[1:].clone()} for v in vecs]


def test_krum_picks_an_honest_client_and_multi_krum_only_honest_ones() -> None:
    # Prepare: n = 7, f = 2 satisfies n > 2f + 2.
    updates = _honest_and_outliers()
    honest_idx = [0, 2, 3, 5, 6]
    # Execute
    scores = krum_scores(updates, 2)
    best = krum_select(updates, 2)
    chosen = krum_select(updates, 2, m=5)
    mk = multi_krum(updates, 2, 5)
    # Assert
    assert scores.shape == (7,) and float(scores[1]) > 1000 * float(scores[0])
    assert best[0] in honest_idx
    assert torch.equal(krum(updates, 2)["a"], updates[best[0]]["a"])
    assert sorted(chosen) == honest_idx
    want = torch.stack([torch.tensor(_vec(updates[i])) for i in honest_idx]).mean(0)
    assert torch.allclose(torch.tensor(_vec(mk)), want, atol=1e-6)


def test_krum_needs_more_than_2f_plus_2_clients() -> None:
    updates = _honest_and_outliers()[:6]
    with pytest.raises(ValueError, match=r"n > 2f \+ 2 = 6"):
        krum(updates, 2)
    with pytest.raises(ValueError, match="1 <= m"):
        multi_krum(_honest_and_outliers(), 2, 8)


# Four scalar updates 0, 1, 3, 10 with f = 0 (n = 4 > 2f + 2): each score sums the squared
# distances to the n - f - 2 = 2 nearest others. Worked out by hand:
#   0: 1 + 9 = 10    1: 1 + 4 = 5    3: 4 + 9 = 13    10: 49 + 81 = 130
HAND = [0.0, 1.0, 3.0, 10.0]


def _scalars(values) -> list[State]:
    return [{"a": torch.tensor([v])} for v in values]


def test_krum_scores_match_numbers_worked_out_by_hand() -> None:
    scores = krum_scores(_scalars(HAND), 0)
    assert scores.tolist() == [10.0, 5.0, 13.0, 130.0]
    assert krum_select(_scalars(HAND), 0, m=2) == [1, 0]


def test_krum_strategies_apply_server_lr_and_ignore_weights() -> None:
    # Prepare: the outlier 10 claims the most examples; weights must not matter
    results = [FitResult(c, 10**c, u) for c, u in enumerate(_scalars(HAND))]
    zero = {"a": torch.zeros(1)}
    # Execute
    multi = aggregate(
        MultiKrum(SAMPLER, num_byzantine=0, num_selected=2, server_lr=0.5), 1, zero, results
    )
    one = aggregate(Krum(SAMPLER, num_byzantine=0), 1, zero, results)
    # Assert: Multi-Krum keeps 1 and 0 (mean 0.5) and steps by 0.5; Krum keeps 1
    assert multi["a"].tolist() == [0.25]
    assert one["a"].tolist() == [1.0]


def test_median_and_trimmed_mean_strategies() -> None:
    results = [FitResult(c, 1, s) for c, s in enumerate(_states([[1, 2, 3], [2, 3, 4], [9, 9, 9]]))]
    zero = {"a": torch.ones(1), "b.weight": torch.ones(2)}
    assert _vec(aggregate(Median(SAMPLER, server_lr=2.0), 1, zero, results)) == [5, 7, 9]
    assert _vec(aggregate(TrimmedMean(SAMPLER, beta=0.34), 1, zero, results)) == [3, 4, 5]
    with pytest.raises(ValueError, match="beta"):
        TrimmedMean(SAMPLER, beta=-0.1)


def test_clip_update() -> None:
    big = {"a": torch.tensor([3.0]), "b.weight": torch.tensor([4.0, 0.0])}
    small = {"a": torch.tensor([0.3]), "b.weight": torch.tensor([0.4, 0.0])}
    assert _vec(clip_update(big, 1.0)) == pytest.approx([0.6, 0.8, 0.0])
    assert _vec(clip_update(small, 1.0)) == pytest.approx([0.3, 0.4, 0.0])
    assert global_norm(clip_update(big, 2.5)) == pytest.approx(2.5)


def test_norm_bound_clips_then_delegates() -> None:
    # Prepare
    zero = {"a": torch.zeros(1), "b.weight": torch.zeros(2)}
    big = {"a": torch.tensor([30.0]), "b.weight": torch.tensor([40.0, 0.0])}
    small = {"a": torch.tensor([0.3]), "b.weight": torch.tensor([0.4, 0.0])}
    results = [FitResult(0, 1, big), FitResult(1, 1, small)]
    strategy = NormBound(FedAvg(SAMPLER), max_norm=1.0)
    # Execute
    new = aggregate(strategy, 1, zero, results)
    fits = strategy.configure(1, [0, 1, 2, 3], np.random.default_rng(0))
    # Assert: mean of [0.6, 0.8, 0] and [0.3, 0.4, 0].
    assert _vec(new) == pytest.approx([0.45, 0.6, 0.0])
    assert len(fits) == 3 and strategy.name == "normbound+fedavg"
    with pytest.raises(ValueError, match="max_norm"):
        NormBound(FedAvg(SAMPLER), max_norm=0.0)


def test_norm_bound_delegates_state() -> None:
    # Prepare
    zero = {"a": torch.zeros(1), "b.weight": torch.zeros(2)}
    results = [FitResult(0, 1, _states([[1, 2, 3]])[0])]
    strategy = NormBound(FedAdam(SAMPLER), max_norm=1.0)
    aggregate(strategy, 1, zero, results)
    # Execute
    saved = strategy.state_dict()
    other = NormBound(FedAdam(SAMPLER), max_norm=1.0)
    other.load_state_dict(saved)
    # Assert
    assert set(saved) == {"m/a", "m/b.weight", "v/a", "v/b.weight"}
    assert torch.equal(other.inner.state_dict()["m/a"], saved["m/a"])


rows_strategy = st.integers(1, 7).flatmap(
    lambda n: st.lists(
        st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=3, max_size=3),
        min_size=n,
        max_size=n,
    )
)


def _aggregators(n: int) -> dict[str, Callable[[list[State]], State]]:
    out: dict[str, Callable[[list[State]], State]] = {
        "median": median,
        "trimmed_mean": lambda u: trimmed_mean(u, 0.2),
    }
    f = (n - 3) // 2
    if f >= 0:
        out["krum"] = lambda u: krum(u, f)
        out["multi_krum"] = lambda u: multi_krum(u, f, n - f)
    return out


@settings(max_examples=60, deadline=None)
@given(rows=rows_strategy, seed=st.integers(0, 2**16))
def test_aggregators_ignore_client_order(rows: list[list[float]], seed: int) -> None:
    # Prepare
    updates = _states(rows)
    perm = np.random.default_rng(seed).permutation(len(updates))
    shuffled = [updates[i] for i in perm]
    # Execute / Assert: bit-identical, ties are broken by value, not position.
    for name, agg in _aggregators(len(rows)).items():
        a, b = agg(updates), agg(shuffled)
        assert all(torch.equal(a[k], b[k]) for k in a), name


@settings(max_examples=60, deadline=None)
@given(
    row=st.lists(st.floats(-1e3, 1e3, allow_nan=False, width=32), min_size=3, max_size=3),
    n=st.integers(1, 7),
)
def test_identical_updates_aggregate_to_themselves(row: list[float], n: int) -> None:
    updates = _states([row] * n)
    for name, agg in _aggregators(n).items():
        out = agg(updates)
        assert all(torch.equal(out[k], updates[0][k]) for k in out), name


@settings(max_examples=40, deadline=None)
@given(rows=rows_strategy)
def test_untrimmed_and_unfiltered_reduce_to_the_plain_mean(rows: list[list[float]]) -> None:
    updates = _states(rows)
    want = torch.tensor(rows, dtype=torch.float64).mean(0).float()
    assert torch.allclose(torch.tensor(_vec(trimmed_mean(updates, 0.0))), want, atol=1e-3)
    if len(rows) >= 3:
        mk = multi_krum(updates, 0, len(rows))
        assert torch.allclose(torch.tensor(_vec(mk)), want, atol=1e-3)
