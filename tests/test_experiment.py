"""End-to-end runs on the tiny config: failures as values, stop and resume, determinism."""

import json

import pytest
import torch

from fedfm import experiment
from fedfm.backends import inprocess
from fedfm.checkpoint import load_checkpoint
from fedfm.errors import NotEnoughClientsError
from fedfm.state import to_bytes
from tests.conftest import StopAfter, states_equal


def test_run_writes_metrics_with_required_keys(tiny_cfg, tmp_path):
    final = experiment.run(tiny_cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["round"] for r in records] == [1, 2, 3]
    for key in ("round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "train_loss"):
        assert all(r[key] is not None for r in records), key
    # bytes up per client = the serialised size of the trainable tensors
    per_client = len(to_bytes({k: torch.zeros_like(v) for k, v in final.items()}))
    assert records[0]["bytes_up"] == 3 * per_client
    assert records[0]["bytes_down"] == 3 * per_client
    assert (tmp_path / "config.json").exists()


def test_same_seed_same_numbers(tiny_cfg, tmp_path):
    a = experiment.run(tiny_cfg, tmp_path / "a")
    b = experiment.run(tiny_cfg, tmp_path / "b")
    assert states_equal(a, b)
    ra = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if "seconds" not in k}  # noqa: E731
    assert [strip(x) for x in ra] == [strip(x) for x in rb]


def test_crash_after_round_k_then_resume_is_bitwise_identical(tiny_cfg, tmp_path):
    # Prepare
    full = experiment.run(tiny_cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    # Execute
    with pytest.raises(KeyboardInterrupt):
        experiment.run(tiny_cfg, crashed, callbacks=[StopAfter(1)])
    assert load_checkpoint(crashed).server_round == 1
    resumed = experiment.run(experiment.stored_config(crashed), crashed, resume=True)
    # Assert
    assert states_equal(full, resumed)
    rounds = [json.loads(x)["round"] for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]


def test_a_failing_client_is_dropped_and_the_round_goes_on(tiny_cfg, tmp_path, monkeypatch):
    real = inprocess.local_train

    def flaky(model, dataset, indices, cfg, overrides, seeds, **kwargs):
        if seeds[2] % 3 == 0:
            raise RuntimeError("disk on fire")
        return real(model, dataset, indices, cfg, overrides, seeds, **kwargs)

    monkeypatch.setattr(inprocess, "local_train", flaky)
    cfg = tiny_cfg.model_copy(
        update={"strategy": tiny_cfg.strategy.model_copy(update={"min_success_fraction": 0.0})}
    )
    experiment.run(cfg, tmp_path)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["num_failures"] for r in records) > 0
    for r in records:
        ok = [c for c in r["clients"] if c % 3 != 0]
        assert r["num_clients"] - r["num_failures"] == len(ok)


def test_too_many_failures_stop_the_run_with_a_clear_error(tiny_cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no")

    monkeypatch.setattr(inprocess, "local_train", broken)
    with pytest.raises(NotEnoughClientsError, match="min_success_fraction"):
        experiment.run(tiny_cfg, tmp_path)


def test_training_improves_on_the_synthetic_task(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(update={"rounds": 6})
    experiment.run(cfg, tmp_path)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["accuracy"] > 0.8
    assert records[-1]["loss"] < records[0]["loss"]


def test_federated_eval_personalisation_summary_and_report(tiny_cfg, tmp_path):
    # Prepare
    from fedfm.config import load_config
    from fedfm.report import write_report
    from tests.conftest import TINY

    cfg = load_config(None, [*TINY, "eval.federated_every=2", "eval.personalize_steps=2"])
    # Execute
    experiment.run(cfg, tmp_path)
    # Assert
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "client_accuracy" not in records[0]
    assert set(records[1]["client_accuracy"]) == {str(c) for c in range(6)}
    assert "client_accuracy" in records[2]  # the last round always evaluates
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["personalized_accuracy"]) == {str(c) for c in range(6)}
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    html = write_report(tmp_path).read_text()
    assert "personalized" in html and "data:image/png;base64" in html


def test_report_compares_with_a_local_only_run(tmp_path):
    # Prepare: a federated run with per-client evaluation and a local-only run of the split
    from fedfm.config import load_config
    from fedfm.report import write_report
    from tests.conftest import TINY

    experiment.run(load_config(None, [*TINY, "eval.federated_every=3"]), tmp_path / "fed")
    experiment.run(load_config(None, [*TINY, "mode=local-only"]), tmp_path / "local")
    # Execute
    html = write_report(tmp_path / "fed", local_only_dir=tmp_path / "local").read_text()
    # Assert
    assert "share worse than local-only" in html


def test_tensorboard_logging_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from fedfm.config import load_config
    from tests.conftest import TINY

    experiment.run(load_config(None, [*TINY, "logging.tensorboard=true"]), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_nan_update_is_rejected_as_a_failure(tiny_cfg, tmp_path, monkeypatch):
    # Prepare: client 0 sends NaNs (as a broken or hostile client would)
    real = inprocess.InProcessBackend._maybe_poison

    def nan_for_client_0(self, update, ins):
        if ins.client_id == 0:
            return {k: torch.full_like(v, float("nan")) for k, v in update.items()}
        return real(self, update, ins)

    monkeypatch.setattr(inprocess.InProcessBackend, "_maybe_poison", nan_for_client_0)
    cfg = tiny_cfg.model_copy(update={"rounds": 4})
    # Execute
    final = experiment.run(cfg, tmp_path)
    # Assert
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    hit = [r for r in records if 0 in r["clients"]]
    assert hit and all(r["num_failures"] == 1 for r in hit)
    assert all("NaN" in r["failures"][0] for r in hit)
    assert all(torch.isfinite(v).all() for v in final.values())
