"""FedDF: the server step moves the global model toward the ensemble; runs resume exactly."""

import pytest
import torch

from fedfm.build import build
from fedfm.checkpoint import load_checkpoint
from fedfm.config import load_config
from fedfm.errors import AggregationError, ConfigError
from fedfm.messages import FitResult
from fedfm.run import run, stored_config
from fedfm.strategies.base import ClientSampler
from fedfm.strategies.feddf import FedDF
from tests.helpers import TINY, StopAfter, states_equal

FEDDF = [
    *TINY,
    "strategy.name=feddf",
    "strategy.server_examples=64",
    "strategy.server_steps=5",
    "strategy.distill_batch_size=16",
    "strategy.distill_lr=0.01",
    "rounds=2",
]


def test_server_step_moves_global_toward_the_ensemble():
    # Prepare: two "client" models around the initial state
    built = build(load_config(None, FEDDF))
    distiller = built.strategy.distill
    start = built.initial_state
    g = torch.Generator().manual_seed(0)
    teachers = [{k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in start.items()}
                for _ in range(2)]  # fmt: skip
    targets = distiller.ensemble_logits(teachers)
    before = distiller.kl_to(start, targets)
    # Execute
    after_state = distiller(1, start, teachers)
    again = distiller(1, start, teachers)
    # Assert
    assert distiller.kl_to(after_state, targets) < 0.5 * before
    assert states_equal(after_state, again)  # seeded by (seed, round)


def test_server_set_is_disjoint_from_clients_and_test():
    built = build(load_config(None, FEDDF))
    server = set(built.data.server_pool.tolist())
    clients = {int(i) for c in built.data.clients.values() for i in (*c.train, *c.test)}
    assert len(server) == 64
    assert not server & clients and not server & set(built.data.central_test.tolist())


def test_fedavg_with_data_server_examples_trains_on_feddfs_split():
    feddf = build(load_config(None, FEDDF)).data
    baseline = [o for o in FEDDF if not o.startswith("strategy.")]
    fedavg = build(load_config(None, [*baseline, "data.server_examples=64"])).data
    plain = build(load_config(None, baseline)).data
    assert (fedavg.server_pool == feddf.server_pool).all()
    for cid, client in feddf.clients.items():
        assert (fedavg.clients[cid].train == client.train).all()
        assert (fedavg.clients[cid].test == client.test).all()
    assert len(plain.server_pool) == 0  # the default holds nothing back


def test_data_server_examples_other_than_feddfs_is_refused():
    with pytest.raises(ConfigError, match=r"data.server_examples=10 .*allowed: 0 or 64"):
        load_config(None, [*FEDDF, "data.server_examples=10"])
    load_config(None, [*FEDDF, "data.server_examples=64"])  # repeating it is fine


def test_reduce_without_distill_step_fails_as_a_value():
    strategy = FedDF(ClientSampler(2))
    state = {"w": torch.zeros(2)}
    with pytest.raises(AggregationError, match="bind_distill"):
        strategy.reduce(1, state, [FitResult(0, 1, {"w": torch.ones(2)})])


def test_feddf_run_completes_and_resumes_bitwise(tmp_path):
    cfg = load_config(None, FEDDF)
    full = run(cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run(cfg, crashed, callbacks=[StopAfter(1)])
    assert load_checkpoint(crashed).server_round == 1
    resumed = run(stored_config(crashed), crashed, resume=True)
    assert states_equal(full, resumed)
    assert all(torch.isfinite(v).all() for v in full.values())


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("strategy.temperature=0", "strategy.temperature"),
        ("strategy.server_steps=0", "strategy.server_steps"),
        ("strategy.server_examples=5000", "strategy.server_examples"),
    ],
)
def test_config_errors_are_one_line(override, field, tmp_path):
    with pytest.raises(ConfigError) as info:
        build(load_config(None, [*FEDDF, override]))
    assert field in str(info.value) and "\n" not in str(info.value)
