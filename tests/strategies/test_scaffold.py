import numpy as np
import pytest
import torch

from fedfm.client.scaffold import ClientStore, option_two_control
from fedfm.core import FitResult
from fedfm.strategies.base import ClientSampler
from fedfm.strategies.scaffold import (
    CONTROL_DELTA,
    SERVER_CONTROL,
    FedProx,
    Scaffold,
    server_control_step,
)


def test_option_two_control_closed_form():
    # c_i+ = c_i - c + (x - y) / (K lr) = 1 - 3 + (10 - 4) / (3 * 0.5) = 2
    out = option_two_control(
        {"w": torch.tensor([1.0])},
        {"w": torch.tensor([3.0])},
        {"w": torch.tensor([10.0])},
        {"w": torch.tensor([4.0])},
        steps=3,
        lr=0.5,
    )
    assert torch.allclose(out["w"], torch.tensor([2.0]))


def test_server_control_step_scales_by_participation():
    # c + |S|/N * mean(dc) = 1 + 2/8 * (2 + 6)/2 = 2
    out = server_control_step(
        {"w": torch.tensor([1.0])}, [{"w": torch.tensor([2.0])}, {"w": torch.tensor([6.0])}], 8
    )
    assert torch.allclose(out["w"], torch.tensor([2.0]))


def test_scaffold_round_updates_model_and_control():
    # Prepare
    strategy = Scaffold(ClientSampler(2), num_clients=4, server_lr=1.0)
    glob = strategy.initialize({"w": torch.tensor([0.0])})
    ins = strategy.configure_fit(1, range(4), np.random.default_rng(0))
    results = [
        FitResult(0, 1, {"w": torch.tensor([1.0])}, {CONTROL_DELTA: {"w": torch.tensor([4.0])}}),
        FitResult(1, 3, {"w": torch.tensor([3.0])}, {CONTROL_DELTA: {"w": torch.tensor([0.0])}}),
    ]
    # Execute
    new = strategy.aggregate_fit(1, glob, results)
    # Assert: example-weighted model step, unweighted control step scaled by 2/4
    assert all(torch.equal(i.extra[SERVER_CONTROL]["w"], torch.zeros(1)) for i in ins)
    assert torch.allclose(new["w"], torch.tensor([2.5]))
    assert torch.allclose(strategy.control_["w"], torch.tensor([1.0]))
    # state_dict round trip
    other = Scaffold(ClientSampler(2), num_clients=4)
    other.load_state_dict(strategy.state_dict())
    assert torch.equal(other.control_["w"], strategy.control_["w"])


def test_scaffold_needs_initialize():
    with pytest.raises(RuntimeError, match="initialize"):
        Scaffold(ClientSampler(1), 2).configure_fit(1, range(2), np.random.default_rng(0))


def test_fedprox_asks_clients_for_the_proximal_term():
    ins = FedProx(ClientSampler(2), proximal_mu=0.3).configure_fit(
        1, range(5), np.random.default_rng(0)
    )
    assert [i.config["proximal_mu"] for i in ins] == [0.3, 0.3]


def test_client_store_round_trip_and_zero_default():
    store = ClientStore()
    like = {"a": torch.ones(2)}
    assert torch.equal(store.get(3, like)["a"], torch.zeros(2))
    store.put(3, {"a": torch.tensor([1.0, 2.0])})
    again = ClientStore()
    again.load_state_dict(store.state_dict())
    assert torch.equal(again.get(3, like)["a"], torch.tensor([1.0, 2.0]))
