import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedfm.errors import NotEnoughClientsError
from fedfm.messages import FitResult
from fedfm.state import weighted_mean
from fedfm.strategies.base import ClientSampler, aggregate
from fedfm.strategies.fedavg import FedAvg


def test_weighted_mean_closed_form():
    # Prepare
    a, b = {"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([4.0, 3.0])}
    # Execute
    out = weighted_mean([a, b], [1, 2])
    # Assert
    assert torch.allclose(out["x"], torch.tensor([3.0, 2.0]))


@pytest.mark.parametrize("server_lr", [1.0, 0.5])
def test_fedavg_adds_the_example_weighted_mean_update(server_lr):
    # Prepare: three updates whose weighted mean differs from each of them
    strategy = FedAvg(ClientSampler(3), server_lr=server_lr)
    glob = {"x": torch.tensor([10.0, -1.0])}
    results = [
        FitResult(0, 30, {"x": torch.tensor([2.0, 1.0])}),
        FitResult(1, 10, {"x": torch.tensor([-6.0, 5.0])}),
        FitResult(2, 20, {"x": torch.tensor([4.0, -4.0])}),
    ]
    # Execute
    out = aggregate(strategy, 1, glob, results)
    # Assert: mean = (60 - 60 + 80) / 60, (30 + 50 - 80) / 60 = (4/3, 0)
    expected = torch.tensor([10.0 + server_lr * 4.0 / 3.0, -1.0])
    assert torch.allclose(out["x"], expected)
    assert not any(torch.allclose(out["x"], glob["x"] + r.update["x"]) for r in results)


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.tuples(st.floats(-10, 10), st.integers(1, 100)), min_size=1, max_size=8),
    st.randoms(),
)
def test_fedavg_is_order_invariant_and_equal_weights_give_the_mean(items, rnd):
    updates = [{"x": torch.tensor([v])} for v, _ in items]
    weights = [w for _, w in items]
    out = weighted_mean(updates, weights)
    order = list(range(len(items)))
    rnd.shuffle(order)
    shuffled = weighted_mean([updates[i] for i in order], [weights[i] for i in order])
    assert torch.allclose(out["x"], shuffled["x"], atol=1e-5)
    plain = weighted_mean(updates, [1] * len(items))
    assert float(plain["x"]) == pytest.approx(np.mean([v for v, _ in items]), abs=1e-4)


@pytest.mark.parametrize("weights", [[0], [-1, 2], [float("nan"), 1], [float("inf"), 1]])
def test_weighted_mean_rejects_bad_weights(weights):
    with pytest.raises(ValueError, match="positive sum"):
        weighted_mean([{"x": torch.zeros(1)}] * len(weights), weights)


def test_sampler_count_fraction_minimum_and_error():
    rng = np.random.default_rng(0)
    assert len(ClientSampler(3).sample(range(10), rng)) == 3
    assert len(ClientSampler(None, fraction=0.25).sample(range(10), rng)) == 3
    assert len(ClientSampler(None, fraction=0.05, min_clients=2).sample(range(10), rng)) == 2
    with pytest.raises(NotEnoughClientsError, match="only 4 exist"):
        ClientSampler(5).sample(range(4), rng)


def test_sampler_is_deterministic_for_a_seed():
    a = ClientSampler(4).sample(range(50), np.random.default_rng([0, 3]))
    b = ClientSampler(4).sample(range(50), np.random.default_rng([0, 3]))
    assert a == b and len(set(a)) == 4
