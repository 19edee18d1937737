"""Every strategy through the real round loop on the tiny job: runs, resumes bit for bit,
and the client-side parts (FedProx term, SCAFFOLD controls, FFA-LoRA freezing, HetLoRA
ranks, attacks) do what they claim."""

import json

import numpy as np
import pytest
import torch

from fedfm.build import build
from fedfm.checkpoint import load_checkpoint
from fedfm.client.hooks import FitContext, HookBase
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.messages import FitTask
from fedfm.run import run, stored_config
from fedfm.strategies.registry import STRATEGIES
from tests.helpers import DIGITS, DIGITS_TOML, TINY, StopAfter, states_equal


def _cfg(*extra):
    return load_config(None, [*TINY, *extra])


def _records(run_dir):
    """The training rounds' records (round 0, the evaluated starting point, left out)."""
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["round"] > 0]


EXTRA = {
    "krum": ["strategy.num_byzantine=0"],
    "multi-krum": ["strategy.num_byzantine=0"],
    "hetlora": ["strategy.lora_ranks=[2, 4, 8]"],
    "flexlora": ["strategy.lora_ranks=[2, 4, 8]"],
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_and_resumes_bitwise(name, tmp_path):
    # Prepare
    cfg = _cfg(f"strategy.name={name}", *EXTRA.get(name, []))
    full = run(cfg, tmp_path / "full")
    # Execute
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", callbacks=[StopAfter(2)])
    resumed = run(stored_config(tmp_path / "crash"), tmp_path / "crash", resume=True)
    # Assert
    assert states_equal(full, resumed)
    assert all(r["num_failures"] == 0 for r in _records(tmp_path / "full"))
    assert all(torch.isfinite(v).all() for v in full.values())


def test_unknown_strategy_lists_the_valid_names():
    with pytest.raises(ConfigError) as info:
        _cfg("strategy.name=nope")
    message = str(info.value)
    assert "strategy.name" in message and "fedadam" in message and "flexlora" in message


def test_scaffold_client_controls_persist_and_are_checkpointed(tmp_path):
    run(_cfg("strategy.name=scaffold"), tmp_path)
    ckpt = load_checkpoint(tmp_path)
    clients = ckpt.section("clients")
    trained = {c for r in _records(tmp_path) for c in r["clients"]}
    assert {int(k.split("/")[0]) for k in clients} == trained
    server = [v for k, v in ckpt.section("strategy").items() if k.startswith("c/")]
    assert server and any(float(v.abs().sum()) > 0 for v in server)
    # extras travel: SCAFFOLD's uplink carries the control delta too
    fedavg = tmp_path / "fedavg"
    run(_cfg(), fedavg)
    assert _records(tmp_path)[0]["bytes_up"] > 1.9 * _records(fedavg)[0]["bytes_up"]


def test_fedprox_term_keeps_updates_closer_to_the_global_state(tmp_path):
    plain = run(_cfg("rounds=1", "client.epochs=3"), tmp_path / "a")
    prox = run(
        _cfg("rounds=1", "client.epochs=3", "strategy.name=fedprox", "strategy.proximal_mu=10"),
        tmp_path / "b",
    )
    init = build(_cfg()).initial_state
    drift = lambda s: sum(float((s[k] - init[k]).norm() ** 2) for k in s)  # noqa: E731
    assert drift(prox) < drift(plain)


def test_ffa_lora_sends_only_b_and_halves_lora_bytes(tmp_path):
    final = run(_cfg("strategy.name=ffa-lora"), tmp_path / "ffa")
    run(_cfg(), tmp_path / "lora")
    assert not any("lora_A" in k for k in final)
    assert any("lora_B" in k for k in final)
    ffa_bytes = _records(tmp_path / "ffa")[0]["bytes_up"]
    lora_bytes = _records(tmp_path / "lora")[0]["bytes_up"]
    assert ffa_bytes < 0.6 * lora_bytes
    # A never changed: after the run the model's A equals a fresh seeded build's
    cfg = _cfg("strategy.name=ffa-lora", "rounds=1")
    built = build(cfg)
    before = {
        n: p.detach().clone() for n, p in built.model.module.named_parameters() if "lora_A" in n
    }
    built.runtime.fit(FitTask(0, 1), built.initial_state)
    after = {n: p for n, p in built.model.module.named_parameters() if "lora_A" in n}
    assert before and all(not p.requires_grad for p in after.values())
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_hetlora_clients_send_updates_of_their_own_rank(tmp_path):
    run(
        _cfg(
            "strategy.name=hetlora",
            "strategy.lora_ranks=[2, 8]",
            "rounds=1",
            "strategy.clients_per_round=6",
        ),
        tmp_path,
    )
    rec = _records(tmp_path)[0]
    lora = tmp_path / "lora"
    run(_cfg("rounds=1", "strategy.clients_per_round=6"), lora)
    # three clients at rank 2 and three at rank 8: fewer bytes than six at rank 8
    assert rec["bytes_up"] < _records(lora)[0]["bytes_up"]
    assert rec["num_failures"] == 0


def test_rank_larger_than_the_adapter_is_refused():
    with pytest.raises(ConfigError, match="lora_ranks"):
        _cfg("strategy.name=hetlora", "strategy.lora_ranks=[4, 16]")


def test_sign_flip_attack_flips_malicious_updates(tmp_path):
    # Prepare: the same job clean and with every client malicious
    clean = build(_cfg())
    bad = build(_cfg("attack.kind=sign-flip", "attack.fraction=1.0"))
    task = FitTask(0, 1)
    # Execute
    u_clean = clean.runtime.fit(task, clean.initial_state)
    u_bad = bad.runtime.fit(task, bad.initial_state)
    # Assert
    like = clean.initial_state
    a = clean.uplink.decode(u_clean.payload, like, clean.uplink.context(0, 1))
    b = bad.uplink.decode(u_bad.payload, like, bad.uplink.context(0, 1))
    assert all(torch.allclose(a[k], -b[k]) for k in a)


def test_label_flip_poisons_only_malicious_training_labels(tmp_path):
    built = build(_cfg("attack.kind=label-flip", "attack.fraction=0.5"))
    orig = build(_cfg()).data.examples.labels
    poisoned = built.runtime.examples.labels
    changed = np.flatnonzero(poisoned != orig)
    owners = {c for c, d in built.data.clients.items() if np.isin(changed, d.train).any()}
    assert len(owners) == 3  # half of six clients
    assert np.array_equal(built.data.examples.labels, orig)  # central evaluation stays clean


@pytest.mark.parametrize("mode", ["centralised", "local-only"])
def test_baselines_write_metrics_and_summary(mode, tmp_path):
    run(_cfg(f"mode={mode}"), tmp_path)
    records = _records(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == mode
    assert all(r["bytes_up"] == 0 for r in records)
    if mode == "centralised":
        assert [r["round"] for r in records] == [1, 2, 3]
        assert records[-1]["accuracy"] > 0.6
    else:
        assert len(records[0]["client_accuracy"]) == 6
        assert 0 <= summary["local_only_std"] <= 0.5
        held = records[0]["client_held_out_accuracy"]  # each own model on the central test
        assert sorted(held) == sorted(records[0]["client_accuracy"])
        assert summary["local_only_held_out_mean"] == pytest.approx(np.mean(list(held.values())))
        assert records[0]["held_out_accuracy"] == pytest.approx(np.mean(list(held.values())))


def test_local_only_held_out_scores_each_own_model_and_can_be_switched_off(tmp_path):
    built = build(_cfg("mode=local-only"))
    state0 = built.central_eval(built.initial_state)["accuracy"]
    run(_cfg("mode=local-only"), tmp_path / "on")
    held = _records(tmp_path / "on")[0]["client_held_out_accuracy"]
    assert any(v != state0 for v in held.values())  # trained models, not the starting point
    run(_cfg("mode=local-only", "eval.local_only_held_out=false"), tmp_path / "off")
    off = _records(tmp_path / "off")[0]
    assert "client_held_out_accuracy" not in off and "held_out_accuracy" not in off
    assert off["client_accuracy"] == _records(tmp_path / "on")[0]["client_accuracy"]


class Raise(HookBase):
    """Client `client_id` fails in every round."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id

    def before_train(self, ctx: FitContext) -> None:
        if ctx.client_id == self.client_id:
            raise RuntimeError("gone")


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["strategy.name=krum"], "n > 2f \\+ 2 = 4"),  # f=1 with 3 clients per round
        (
            ["strategy.name=multi-krum", "strategy.num_byzantine=0", "strategy.num_selected=4"],
            "m <= n=3",
        ),
    ],
)
def test_krum_settings_that_can_never_work_are_refused_at_config_time(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        run(_cfg(*extra), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any training


def test_krum_with_too_few_survivors_fails_the_round_and_keeps_the_state(tmp_path):
    # Prepare: f=0 needs n > 2; one of the three clients of every round that has client 0 fails
    cfg = _cfg("strategy.name=krum", "strategy.num_byzantine=0", "rounds=3")
    # Execute
    with pytest.warns(UserWarning, match="failed, the global state is kept"):
        run(cfg, tmp_path, extra_hooks=[Raise(0)])
    # Assert
    for r in _records(tmp_path):
        assert ("error" in r) == (0 in r["clients"])


def test_a_non_finite_global_state_fails_the_round_and_keeps_the_previous_one(tmp_path):
    cfg = _cfg("strategy.server_lr=1e300", "rounds=2")  # any step overflows float32
    with pytest.warns(UserWarning, match="NaN or infinite"):
        final = run(cfg, tmp_path)
    assert states_equal(final, build(cfg).initial_state)
    assert all("error" in r for r in _records(tmp_path))


DIGITS_EXTRA = {
    "krum": ["strategy.num_byzantine=1"],
    "multi-krum": ["strategy.num_byzantine=1"],
    "hetlora": ["strategy.lora_ranks=[2, 4]", "adapter.method=lora", "adapter.r=4"],
    "flexlora": ["strategy.lora_ranks=[2, 4]", "adapter.method=lora", "adapter.r=4"],
    "exact": ["adapter.method=lora"],
    "ffa-lora": ["adapter.method=lora"],
}


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_runs_and_resumes_bitwise_on_digits(name, tmp_path):
    # Prepare: digits needs no transformers; 5 clients per round let Krum run with f = 1
    cfg = load_config(DIGITS_TOML, [*DIGITS, f"strategy.name={name}", *DIGITS_EXTRA.get(name, [])])
    full = run(cfg, tmp_path / "full")
    # Execute
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", callbacks=[StopAfter(2)])
    resumed = run(stored_config(tmp_path / "crash"), tmp_path / "crash", resume=True)
    # Assert
    assert states_equal(full, resumed)
    records = _records(tmp_path / "full")
    assert all(r["num_failures"] == 0 and "error" not in r for r in records)
    assert records[-1]["accuracy"] > 0.25  # chance is 0.1: every strategy learns something
