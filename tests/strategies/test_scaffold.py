"""SCAFFOLD: server maths, the client hook (correction sign, option II, pending controls),
and the invariant c = mean(c_i) through the real loop, with and without dropped updates."""

import numpy as np
import pytest
import torch

from fedfm.checkpoint import load_checkpoint
from fedfm.client.hooks import FitContext, HookBase
from fedfm.client.state import InMemoryStore, unflatten
from fedfm.messages import FitResult, FitTask
from fedfm.run import run
from fedfm.strategies.base import ClientSampler, aggregate
from fedfm.strategies.scaffold import (
    ACCEPTED,
    CONTROL,
    CONTROL_DELTA,
    ControlVariates,
    Scaffold,
    option_two_control,
    server_control_step,
)
from tests.helpers import records, toy_config, toy_runtime


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
    # c + |S|/N * mean(dc) = 1 + 2/8 * 4 = 2
    out = server_control_step({"w": torch.tensor([1.0])}, {"w": torch.tensor([4.0])}, 2, 8)
    assert torch.allclose(out["w"], torch.tensor([2.0]))


def test_scaffold_round_updates_model_control_and_accepted_rounds():
    # Prepare
    strategy = Scaffold(ClientSampler(2), num_clients=4, server_lr=1.0)
    glob = strategy.initialize({"w": torch.tensor([0.0])})
    tasks = strategy.configure(1, range(4), np.random.default_rng(0))
    results = [
        FitResult(0, 1, {"w": torch.tensor([1.0])}, {CONTROL_DELTA: {"w": torch.tensor([4.0])}}),
        FitResult(1, 3, {"w": torch.tensor([3.0])}, {CONTROL_DELTA: {"w": torch.tensor([0.0])}}),
    ]
    # Execute
    new = aggregate(strategy, 1, glob, results)
    # Assert: example-weighted model step, unweighted control step scaled by 2/4
    assert all(torch.equal(t.extras[CONTROL]["w"], torch.zeros(1)) for t in tasks)
    assert all(int(t.extras[ACCEPTED]["round"][0]) == 0 for t in tasks)
    assert torch.allclose(new["w"], torch.tensor([2.5]))
    assert torch.allclose(strategy.control_["w"], torch.tensor([1.0]))
    assert strategy.accepted_ == {0: 1, 1: 1}
    other = Scaffold(ClientSampler(2), num_clients=4)
    other.load_state_dict(strategy.state_dict())
    assert torch.equal(other.control_["w"], strategy.control_["w"])
    assert other.accepted_ == strategy.accepted_


def test_scaffold_needs_initialize():
    with pytest.raises(RuntimeError, match="initialize"):
        Scaffold(ClientSampler(1), 2).configure(1, range(2), np.random.default_rng(0))


def _task(control: dict, accepted: int = 0, server_round: int = 1) -> FitTask:
    extras = {CONTROL: control, ACCEPTED: {"round": torch.tensor([accepted])}}
    return FitTask(0, server_round, extras=extras)


def test_client_correction_is_c_minus_ci_added_to_the_gradient():
    # Prepare: one plain SGD step with and without SCAFFOLD's hook (c_i = 0 at first)
    cfg = toy_config("client.max_steps=1")
    plain = toy_runtime(cfg)
    hooked = toy_runtime(cfg, hooks=[ControlVariates(sgd=True)])
    start = plain.model.get_state()
    control = {k: torch.full_like(v, 0.5) for k, v in start.items()}
    # Execute
    a = plain.uplink.decode(
        plain.fit(FitTask(0, 1), start).payload, start, plain.uplink.context(0, 1)
    )
    reply = hooked.fit(_task(control), start)
    b = hooked.uplink.decode(reply.payload, start, hooked.uplink.context(0, 1))
    # Assert: y = x - lr (g + c - c_i), so the updates differ by -lr * c exactly
    for k in start:
        assert torch.allclose(b[k] - a[k], -0.1 * control[k], atol=1e-6)
    # option II with K = 1: c_i+ = -c + (x - y) / lr = g, the first step's gradient
    delta = hooked.uplink.decode(reply.extras[CONTROL_DELTA], start, hooked.uplink.context(0, 1))
    for k in start:
        assert torch.allclose(delta[k], -a[k] / 0.1, atol=1e-5)


def test_client_adopts_its_new_control_only_once_the_server_accepted_it():
    # Prepare
    store = InMemoryStore()
    runtime = toy_runtime(
        toy_config("client.max_steps=1"), [ControlVariates(sgd=True)], store=store
    )
    start = runtime.model.get_state()
    zero = {k: torch.zeros_like(v) for k, v in start.items()}
    # Execute: round 1 leaves c_1+ pending; round 3 says round 1 was never accepted
    runtime.fit(_task(zero, accepted=0, server_round=1), start)
    pending = store.get(0, "scaffold.pending")
    runtime.fit(_task(zero, accepted=0, server_round=3), start)
    rejected = store.get(0, "scaffold.control")
    # then round 5 says round 3 was accepted: its pending control becomes c_i
    pending3 = store.get(0, "scaffold.pending")
    runtime.fit(_task(zero, accepted=3, server_round=5), start)
    # Assert
    assert pending is not None and rejected is None
    assert all(torch.equal(store.get(0, "scaffold.control")[k], pending3[k]) for k in start)


class _NaNForClient(HookBase):
    """A broken client: its trained state turns into NaN in the given round."""

    def __init__(self, client_id: int, server_round: int) -> None:
        self.client_id, self.server_round = client_id, server_round

    def after_train(self, ctx: FitContext) -> None:
        if ctx.client_id == self.client_id and ctx.task.server_round == self.server_round:
            ctx.end = {k: torch.full_like(v, float("nan")) for k, v in ctx.end.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
@pytest.mark.parametrize("broken", [False, True])
def test_server_control_is_the_mean_of_the_client_controls(tmp_path, optimizer, broken):
    # Prepare: 4 clients, 2 per round; optionally one update dropped as non-finite
    cfg = toy_config(
        "strategy.name=scaffold", "rounds=4", f"client.optimizer={optimizer}", "client.max_steps=3"
    )
    victim = ClientSampler(2).sample(range(4), np.random.default_rng([cfg.seed, 2, 0x5A3D]))[0]
    hooks = [_NaNForClient(victim, server_round=2)] if broken else []
    # Execute
    run(cfg, tmp_path, extra_hooks=hooks)
    assert sum(r["num_failures"] for r in records(tmp_path)) == int(broken)
    # Assert: c = (1/N) Σ c_i, with c_i the pending control where the server accepted it
    ckpt = load_checkpoint(tmp_path)
    strategy = ckpt.section("strategy")
    control = {k[2:]: v for k, v in strategy.items() if k.startswith("c/")}
    accepted = {int(c): r for c, r in strategy["accepted"].items()}
    clients = unflatten({k: v for k, v in ckpt.section("clients").items()})
    total = {k: torch.zeros_like(v) for k, v in control.items()}
    for cid, states in clients.items():
        own = states.get("scaffold.control")
        pending_round = states.get("scaffold.pending_round")
        if pending_round is not None and int(pending_round["round"][0]) == accepted.get(cid):
            own = states["scaffold.pending"]
        for k in total:
            total[k] += own[k] if own is not None else 0
    for k, c in control.items():
        assert torch.allclose(c, total[k] / 4, atol=1e-6)
    assert any(float(v.abs().sum()) > 0 for v in control.values())
