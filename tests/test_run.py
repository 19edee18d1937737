"""End-to-end runs on the tiny config: failures as values, stop and resume, determinism."""

import json
from pathlib import Path

import pytest
import torch

from fedfm.checkpoint import load_checkpoint
from fedfm.client.hooks import FitContext, HookBase
from fedfm.errors import NotEnoughClientsError
from fedfm.run import run, stored_config
from fedfm.state import to_bytes
from tests.helpers import StopAfter, states_equal

REFERENCE = Path(__file__).parent / "data" / "tiny_reference.json"


class Raise(HookBase):
    """A client that fails: raises before training for the chosen clients."""

    def __init__(self, which) -> None:
        self.which = which

    def before_train(self, ctx: FitContext) -> None:
        if self.which(ctx.client_id):
            raise RuntimeError("disk on fire")


class NaNUpdate(HookBase):
    """A broken or hostile client: its trained state becomes NaN."""

    def __init__(self, client_id: int) -> None:
        self.client_id = client_id

    def after_train(self, ctx: FitContext) -> None:
        if ctx.client_id == self.client_id:
            ctx.end = {k: torch.full_like(v, float("nan")) for k, v in ctx.end.items()}


def test_run_writes_metrics_with_required_keys(tiny_cfg, tmp_path):
    final = run(tiny_cfg, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(x) for x in lines]
    assert [r["round"] for r in records] == [0, 1, 2, 3]  # round 0: the starting point
    assert records[0]["accuracy"] is not None and records[0]["bytes_up"] == 0
    for key in ("round", "accuracy", "loss", "bytes_up", "bytes_down", "seconds", "train_loss"):
        assert all(r[key] is not None for r in records[1:]), key
    # bytes up per client = the serialised size of the trainable tensors
    per_client = len(to_bytes({k: torch.zeros_like(v) for k, v in final.items()}))
    assert records[1]["bytes_up"] == 3 * per_client
    assert records[1]["bytes_down"] == 3 * per_client
    assert (tmp_path / "config.json").exists()


def test_same_seed_same_numbers(tiny_cfg, tmp_path):
    a = run(tiny_cfg, tmp_path / "a")
    b = run(tiny_cfg, tmp_path / "b")
    assert states_equal(a, b)
    ra = (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    rb = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    strip = lambda line: {k: v for k, v in json.loads(line).items() if "seconds" not in k}  # noqa: E731
    assert [strip(x) for x in ra] == [strip(x) for x in rb]


def test_crash_after_round_k_then_resume_is_bitwise_identical(tiny_cfg, tmp_path):
    # Prepare
    full = run(tiny_cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    # Execute
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, crashed, callbacks=[StopAfter(1)])
    assert load_checkpoint(crashed).server_round == 1
    resumed = run(stored_config(crashed), crashed, resume=True)
    # Assert
    assert states_equal(full, resumed)
    rounds = [json.loads(x)["round"] for x in (crashed / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]


def test_a_failing_client_is_dropped_and_the_round_goes_on(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(
        update={"strategy": tiny_cfg.strategy.model_copy(update={"min_success_fraction": 0.0})}
    )
    run(cfg, tmp_path, extra_hooks=[Raise(lambda c: c % 3 == 0)])
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["num_failures"] for r in records) > 0
    for r in records:
        ok = [c for c in r["clients"] if c % 3 != 0]
        assert r["num_clients"] - r["num_failures"] == len(ok)
        assert all("train_error: RuntimeError: disk on fire" in f for f in r.get("failures", []))


def test_too_many_failures_stop_the_run_with_a_clear_error(tiny_cfg, tmp_path):
    with pytest.raises(NotEnoughClientsError, match="min_success_fraction"):
        run(tiny_cfg, tmp_path, extra_hooks=[Raise(lambda c: True)])


def test_tiny_job_matches_the_numbers_stored_in_the_repo(tmp_path):
    # The tiny job's metrics, recorded before the wave-2 refactor: a refactor changes no number.
    from fedfm.config import load_config
    from tests.helpers import TINY

    reference = json.loads(REFERENCE.read_text())
    for name in ("fedavg", "fedadam"):
        extra = [] if name == "fedavg" else [f"strategy.name={name}"]
        final = run(load_config(None, [*TINY, *extra]), tmp_path / name)
        lines = (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        keys = ("round", "accuracy", "loss", "train_loss", "update_norm", "bytes_up", "bytes_down")
        got = [{k: json.loads(x)[k] for k in keys} for x in lines if json.loads(x)["round"] > 0]
        assert got == reference[name]
        assert (
            float(sum(v.double().sum() for v in final.values())) == reference[f"{name}_final_sum"]
        )


def test_training_improves_on_the_synthetic_task(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(update={"rounds": 6})
    run(cfg, tmp_path)
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["accuracy"] > 0.8
    assert records[-1]["loss"] < records[0]["loss"]


def test_federated_eval_personalisation_summary_and_report(tiny_cfg, tmp_path):
    # Prepare
    from fedfm.config import load_config
    from fedfm.report import write_report
    from tests.helpers import TINY

    cfg = load_config(None, [*TINY, "eval.federated_every=2", "eval.personalize_steps=2"])
    # Execute
    run(cfg, tmp_path)
    # Assert
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "client_accuracy" not in records[1]
    assert set(records[2]["client_accuracy"]) == {str(c) for c in range(6)}
    assert "client_accuracy" in records[3]  # the last round always evaluates
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["personalized_accuracy"]) == {str(c) for c in range(6)}
    assert summary["final_accuracy"] == records[-1]["accuracy"]
    assert summary["seconds_personalize"] > 0
    html = write_report(tmp_path).read_text()
    assert "personalized" in html and "data:image/png;base64" in html
    assert "tiny-bert on synthetic + LoRA r=8, fedavg, iid split into 6 clients" in html


def test_personalisation_evaluates_only_what_it_needs(tmp_path):
    # Prepare: personalisation without per-client evaluation in the rounds
    from fedfm.config import load_config
    from fedfm.report import write_report
    from tests.helpers import TINY

    cfg = load_config(None, [*TINY, "rounds=1", "eval.personalize_steps=1"])
    # Execute
    run(cfg, tmp_path)
    # Assert: no round evaluated the clients; the summary holds both per-client columns
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert not any("client_accuracy" in r for r in records)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["final_client_accuracy"]) == set(summary["personalized_accuracy"])
    assert len(summary["personalized_accuracy"]) == 6
    html = write_report(tmp_path).read_text()
    assert "personalized" in html and "global model" in html


def test_report_compares_with_a_local_only_run(tmp_path):
    # Prepare: a federated run with per-client evaluation and a local-only run of the split
    from fedfm.config import load_config
    from fedfm.report import write_report
    from tests.helpers import TINY

    run(load_config(None, [*TINY, "eval.federated_every=3"]), tmp_path / "fed")
    run(load_config(None, [*TINY, "mode=local-only"]), tmp_path / "local")
    # Execute
    html = write_report(tmp_path / "fed", local_only_dir=tmp_path / "local").read_text()
    # Assert
    assert "share worse than local-only" in html


def test_tensorboard_logging_writes_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from fedfm.config import load_config
    from tests.helpers import TINY

    run(load_config(None, [*TINY, "logging.tensorboard=true"]), tmp_path)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_a_nan_update_is_rejected_as_a_failure(tiny_cfg, tmp_path):
    # Prepare: client 0 sends NaNs (as a broken or hostile client would)
    cfg = tiny_cfg.model_copy(update={"rounds": 4})
    # Execute
    final = run(cfg, tmp_path, extra_hooks=[NaNUpdate(0)])
    # Assert
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    hit = [r for r in records if 0 in r["clients"]]
    assert hit and all(r["num_failures"] == 1 for r in hit)
    assert all("NaN" in r["failures"][0] for r in hit)
    assert all(torch.isfinite(v).all() for v in final.values())


# Hardening: each test below failed on wave 1's main.


def test_a_fresh_run_removes_an_older_runs_checkpoint(tmp_path):
    # Prepare: an old run (fedavg, seed 0), then a new one (fedadam, seed 1) that crashes in
    # round 1, before its first checkpoint
    from fedfm.config import load_config
    from fedfm.errors import CheckpointError
    from tests.helpers import TINY

    run(load_config(None, [*TINY, "rounds=2"]), tmp_path)
    new = load_config(None, [*TINY, "seed=1", "strategy.name=fedadam"])

    class Boom:
        def round_started(self, server_round, num_clients):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(new, tmp_path, progress=Boom())
    # Execute / Assert: nothing of the old run is left to resume
    assert not (tmp_path / "checkpoint.json").exists()
    assert not list(tmp_path.glob("checkpoint-*.safetensors"))
    with pytest.raises(CheckpointError, match="no checkpoint"):
        run(stored_config(tmp_path), tmp_path, resume=True)


@pytest.mark.parametrize(
    ("override", "key"),
    [("seed=1", "seed"), ("strategy.name=fedadam", "strategy"), ("adapter.r=4", "adapter")],
)
def test_resume_refuses_a_different_config_with_one_line(tiny_cfg, tmp_path, override, key):
    from fedfm.errors import CheckpointError

    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, tmp_path, callbacks=[StopAfter(1)])
    with pytest.raises(CheckpointError, match=key) as info:
        run(stored_config(tmp_path, [override]), tmp_path, resume=True)
    assert "\n" not in str(info.value)
    # what does not change the computation may change
    run(stored_config(tmp_path, ["rounds=2", "eval.every=2"]), tmp_path, resume=True)


def test_resume_survives_a_truncated_last_metrics_line(tiny_cfg, tmp_path):
    full = run(tiny_cfg, tmp_path / "full")
    crashed = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, crashed, callbacks=[StopAfter(2)])
    metrics = crashed / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"round": 3, "accur')  # killed mid-append
    resumed = run(stored_config(crashed), crashed, resume=True)
    assert states_equal(full, resumed)
    rounds = [json.loads(x)["round"] for x in metrics.read_text().splitlines()]
    assert rounds == [0, 1, 2, 3]


def test_a_checkpoint_naming_a_foreign_file_is_refused_and_nothing_is_deleted(tiny_cfg, tmp_path):
    from fedfm.checkpoint import save_checkpoint
    from fedfm.errors import CheckpointError

    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, tmp_path, callbacks=[StopAfter(1)])
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    doc = json.loads((tmp_path / "checkpoint.json").read_text())
    for name in ("victim.txt", "../victim.txt", str(victim)):
        doc["tensors"] = name
        (tmp_path / "checkpoint.json").write_text(json.dumps(doc))
        with pytest.raises(CheckpointError, match="tensors"):
            load_checkpoint(tmp_path)
        save_checkpoint(tmp_path, 2, {"global": {"w": torch.zeros(1)}}, {})
        assert victim.read_text() == "keep me"


@pytest.mark.parametrize("drop", ["server_round", "tensors", "sections", "all"])
def test_a_malformed_checkpoint_is_a_checkpoint_error(tiny_cfg, tmp_path, drop):
    from fedfm.errors import CheckpointError

    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, tmp_path, callbacks=[StopAfter(1)])
    path = tmp_path / "checkpoint.json"
    doc = json.loads(path.read_text())
    path.write_text(
        "[1, 2]" if drop == "all" else json.dumps({k: v for k, v in doc.items() if k != drop})
    )
    with pytest.raises(CheckpointError):
        run(stored_config(tmp_path), tmp_path, resume=True)


def test_resume_checks_shapes_and_dtypes_not_only_names(tiny_cfg, tmp_path):
    from fedfm.checkpoint import save_checkpoint
    from fedfm.errors import CheckpointError

    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, tmp_path, callbacks=[StopAfter(1)])
    ckpt = load_checkpoint(tmp_path)
    bad = {k: v.double() for k, v in ckpt.global_state.items()}
    save_checkpoint(tmp_path, 1, {**ckpt.sections, "global": bad}, ckpt.meta)
    with pytest.raises(CheckpointError, match="float64"):
        run(stored_config(tmp_path), tmp_path, resume=True)


def test_a_checkpoint_older_than_a_config_section_resumes_with_its_defaults(tiny_cfg, tmp_path):
    import json

    from fedfm.checkpoint import JSON_NAME
    from fedfm.errors import CheckpointError

    with pytest.raises(KeyboardInterrupt):
        run(tiny_cfg, tmp_path, callbacks=[StopAfter(1)])
    # Prepare: the checkpoint of a fedfm without the `privacy` and `comm` sections
    path = tmp_path / JSON_NAME
    doc = json.loads(path.read_text())
    for key in ("privacy", "comm"):
        del doc["meta"]["config"][key]
    del doc["meta"]["config"]["eval"]["local_only_held_out"]  # and a setting of a section
    path.write_text(json.dumps(doc))
    # Execute / Assert: the defaults stand in for them; a non-default value is still refused
    run(stored_config(tmp_path, ["rounds=2"]), tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="privacy"):
        run(stored_config(tmp_path, ["privacy.delta=1e-6"]), tmp_path, resume=True)
