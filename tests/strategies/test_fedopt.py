"""FedAvgM and FedOpt (FedAdagrad, FedYogi, FedAdam): closed-form steps, properties, resume."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.messages import FitResult
from fedfm.state import from_bytes, to_bytes
from fedfm.strategies.base import ClientSampler, aggregate
from fedfm.strategies.fedopt import (
    FedAdagrad,
    FedAdam,
    FedAvgM,
    FedOpt,
    FedYogi,
    fedavgm_step,
    fedopt_step,
)

SAMPLER = ClientSampler(clients_per_round=2)
X0 = {"w": torch.tensor([1.0, 2.0], dtype=torch.float64)}
# Round 1: Δ1 = (1·[0.2, -0.4] + 3·[0.4, 0.0]) / 4 = [0.35, -0.1].
ROUND1 = [
    FitResult(0, 1, {"w": torch.tensor([0.2, -0.4], dtype=torch.float64)}),
    FitResult(1, 3, {"w": torch.tensor([0.4, 0.0], dtype=torch.float64)}),
]
# Round 2: Δ2 = ([-0.3, 0.0] + [-0.1, 0.02]) / 2 = [-0.2, 0.01].
ROUND2 = [
    FitResult(0, 2, {"w": torch.tensor([-0.3, 0.0], dtype=torch.float64)}),
    FitResult(1, 2, {"w": torch.tensor([-0.1, 0.02], dtype=torch.float64)}),
]


def _two_rounds(strategy: FedOpt | FedAvgM) -> tuple[list[float], list[float]]:
    x1 = aggregate(strategy, 1, X0, ROUND1)
    x2 = aggregate(strategy, 2, x1, ROUND2)
    return x1["w"].tolist(), x2["w"].tolist()


def _step(x: float, m: float, v: float, lr: float, tau: float) -> float:
    return x + lr * m / (math.sqrt(v) + tau)


def test_fedavgm_closed_form() -> None:
    # Prepare: m1 = Δ1; m2 = 0.9 Δ1 + Δ2 = [0.115, -0.08]; x += 0.5 m.
    strategy = FedAvgM(SAMPLER, server_lr=0.5, momentum=0.9)
    # Execute
    x1, x2 = _two_rounds(strategy)
    # Assert
    assert x1 == pytest.approx([1.175, 1.95], abs=1e-12)
    assert x2 == pytest.approx([1.175 + 0.5 * 0.115, 1.95 - 0.5 * 0.08], abs=1e-12)


def test_fedadam_closed_form() -> None:
    # Prepare: η=0.1, β1=0.9, β2=0.99, τ=0.01, v0 = τ² = 1e-4.
    strategy = FedAdam(SAMPLER, server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    m1 = [0.035, -0.01]
    v1 = [0.99e-4 + 0.01 * 0.1225, 0.99e-4 + 0.01 * 0.01]
    m2 = [0.0315 - 0.02, -0.009 + 0.001]
    v2 = [0.99 * v1[0] + 0.01 * 0.04, 0.99 * v1[1] + 0.01 * 0.0001]
    # Execute
    x1, x2 = _two_rounds(strategy)
    # Assert
    want1 = [_step(1.0, m1[0], v1[0], 0.1, 0.01), _step(2.0, m1[1], v1[1], 0.1, 0.01)]
    want2 = [_step(want1[i], m2[i], v2[i], 0.1, 0.01) for i in range(2)]
    assert x1 == pytest.approx(want1, abs=1e-12)
    assert x2 == pytest.approx(want2, abs=1e-12)


def test_fedyogi_closed_form() -> None:
    # Prepare: round 1, Δ² > v0 on both coordinates: v1 = v0 + 0.01 Δ1².
    # Round 2, coordinate 0: Δ² = 0.04 > v1 -> v2 = v1 + 0.01·0.04;
    # coordinate 1: Δ² = 1e-4 < v1 = 2e-4 -> v2 = v1 - 0.01·1e-4 (sign matters here).
    strategy = FedYogi(SAMPLER, server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01)
    m1 = [0.035, -0.01]
    v1 = [1e-4 + 0.01 * 0.1225, 1e-4 + 0.01 * 0.01]
    m2 = [0.0115, -0.008]
    v2 = [v1[0] + 0.01 * 0.04, v1[1] - 0.01 * 0.0001]
    # Execute
    x1, x2 = _two_rounds(strategy)
    # Assert
    want1 = [_step(1.0, m1[0], v1[0], 0.1, 0.01), _step(2.0, m1[1], v1[1], 0.1, 0.01)]
    want2 = [_step(want1[i], m2[i], v2[i], 0.1, 0.01) for i in range(2)]
    assert x1 == pytest.approx(want1, abs=1e-12)
    assert x2 == pytest.approx(want2, abs=1e-12)
    assert strategy.v_ is not None
    assert strategy.v_["w"].tolist() == pytest.approx(v2, abs=1e-15)


def test_fedadagrad_closed_form() -> None:
    # Prepare: β1 = 0 (default) so m = Δ; v = τ² + Δ1² + Δ2².
    strategy = FedAdagrad(SAMPLER, server_lr=0.1, tau=0.01)
    v1 = [1e-4 + 0.1225, 1e-4 + 0.01]
    v2 = [v1[0] + 0.04, v1[1] + 0.0001]
    # Execute
    x1, x2 = _two_rounds(strategy)
    # Assert
    want1 = [_step(1.0, 0.35, v1[0], 0.1, 0.01), _step(2.0, -0.1, v1[1], 0.1, 0.01)]
    want2 = [_step(want1[0], -0.2, v2[0], 0.1, 0.01), _step(want1[1], 0.01, v2[1], 0.1, 0.01)]
    assert x1 == pytest.approx(want1, abs=1e-12)
    assert x2 == pytest.approx(want2, abs=1e-12)


def test_fedopt_step_first_round_closed_form() -> None:
    # Prepare
    delta = {"w": torch.tensor([0.35, -0.1], dtype=torch.float64)}
    # Execute
    x1, m, v = fedopt_step(
        X0, delta, None, None, method="adam", server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.01
    )
    # Assert: m = 0.1 Δ, v = 0.99 τ² + 0.01 Δ², x = x0 + η m / (√v + τ), by hand
    assert m["w"].tolist() == pytest.approx([0.035, -0.01])
    assert v["w"].tolist() == pytest.approx([0.99e-4 + 0.01 * 0.1225, 0.99e-4 + 0.01 * 0.01])
    want = [
        1.0 + 0.1 * 0.035 / ((0.99e-4 + 0.001225) ** 0.5 + 0.01),
        2.0 - 0.1 * 0.01 / ((0.99e-4 + 0.0001) ** 0.5 + 0.01),
    ]
    assert x1["w"].tolist() == pytest.approx(want, abs=1e-12)


def test_fedopt_step_rejects_unknown_method_and_keys() -> None:
    with pytest.raises(ValueError, match="adagrad"):
        fedopt_step(X0, X0, None, None, method="sgd", server_lr=1, beta1=0, beta2=0, tau=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="keys"):
        fedavgm_step(X0, {"other": torch.zeros(2)}, None, server_lr=1.0, momentum=0.9)


def test_half_precision_state_keeps_dtype_and_float32_moments() -> None:
    # Prepare
    x = {"w": torch.ones(3, dtype=torch.bfloat16)}
    results = [FitResult(0, 1, {"w": torch.full((3,), 0.5, dtype=torch.bfloat16)})]
    strategy = FedAdam(SAMPLER)
    # Execute
    new = aggregate(strategy, 1, x, results)
    # Assert
    assert new["w"].dtype == torch.bfloat16
    assert strategy.m_ is not None and strategy.m_["w"].dtype == torch.float32


def _random_round(seed: int, n: int = 3) -> list[FitResult]:
    g = torch.Generator().manual_seed(seed)
    return [
        FitResult(c, 5 + c, {"a": torch.randn(4, 3, generator=g), "b": torch.randn(2, generator=g)})
        for c in range(n)
    ]


FACTORIES: dict[str, Callable[[], FedOpt | FedAvgM]] = {
    "fedavgm": lambda: FedAvgM(SAMPLER, server_lr=0.7, momentum=0.9),
    "fedadam": lambda: FedAdam(SAMPLER),
    "fedyogi": lambda: FedYogi(SAMPLER),
    "fedadagrad": lambda: FedAdagrad(SAMPLER),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_is_bit_identical(name: str) -> None:
    # Prepare: an uninterrupted run of three rounds.
    x0 = {"a": torch.zeros(4, 3), "b": torch.ones(2)}
    full = FACTORIES[name]()
    x = x0
    for rnd in (1, 2):
        x = aggregate(full, rnd, x, _random_round(rnd))
    saved = full.state_dict()
    expected = aggregate(full, 3, x, _random_round(3))
    # Execute: a fresh instance restored from a safetensors round trip of the state.
    resumed = FACTORIES[name]()
    resumed.load_state_dict(from_bytes(to_bytes(saved)))
    got = aggregate(resumed, 3, x, _random_round(3))
    # Assert
    assert saved and all(isinstance(v, torch.Tensor) for v in saved.values())
    assert all(k.split("/", 1)[0] in {"m", "v"} for k in saved)
    for k in expected:
        assert torch.equal(got[k], expected[k])


def test_empty_state_dict_before_first_round_resets() -> None:
    strategy = FedAdam(SAMPLER)
    aggregate(strategy, 1, {"a": torch.zeros(4, 3), "b": torch.ones(2)}, _random_round(1))
    strategy.load_state_dict(FedAdam(SAMPLER).state_dict())
    assert strategy.m_ is None and strategy.v_ is None


vectors = st.lists(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=3, max_size=3), min_size=1, max_size=6
)


@settings(max_examples=40, deadline=None)
@given(rows=vectors, seed=st.integers(0, 2**16))
@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_client_order_does_not_matter(name: str, rows: list[list[float]], seed: int) -> None:
    # Prepare
    x0 = {"w": torch.zeros(3)}
    results = [FitResult(c, c + 1, {"w": torch.tensor(r)}) for c, r in enumerate(rows)]
    perm = np.random.default_rng(seed).permutation(len(results))
    # Execute
    a = aggregate(FACTORIES[name](), 1, x0, results)
    b = aggregate(FACTORIES[name](), 1, x0, [results[i] for i in perm])
    # Assert
    assert torch.equal(a["w"], b["w"])


@settings(max_examples=40, deadline=None)
@given(rows=vectors, weight=st.integers(1, 1000))
def test_equal_weights_give_the_plain_mean(rows: list[list[float]], weight: int) -> None:
    # Prepare: momentum 0 and lr 1 make FedAvgM plain averaging.
    x0 = {"w": torch.zeros(3, dtype=torch.float64)}
    results = [
        FitResult(c, weight, {"w": torch.tensor(r, dtype=torch.float64)})
        for c, r in enumerate(rows)
    ]
    # Execute
    new = aggregate(FedAvgM(SAMPLER, server_lr=1.0, momentum=0.0), 1, x0, results)
    # Assert
    want = torch.tensor(rows, dtype=torch.float64).mean(dim=0)
    assert torch.allclose(new["w"], want, atol=1e-12)


def test_invalid_hyperparameters() -> None:
    with pytest.raises(ValueError, match="beta1"):
        FedAdam(SAMPLER, beta1=1.0)
    with pytest.raises(ValueError, match="tau"):
        FedYogi(SAMPLER, tau=0.0)
