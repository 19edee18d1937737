"""Compression through the real round loop on the tiny job: exact byte counts, residuals
that survive a crash, the communication budget and the stop seam."""

import json

import pytest
import torch

from fedfm.backends.inprocess import InProcessBackend
from fedfm.build import build
from fedfm.checkpoint import load_checkpoint
from fedfm.client.hooks import FitContext, HookBase
from fedfm.config import load_config
from fedfm.pipeline import StageBase
from fedfm.run import loop_parts, run, stored_config
from fedfm.server.loop import run_rounds
from tests.helpers import TINY, StopAfter, records, states_equal

UP = 'pipeline.uplink=[{name="topk", fraction=0.2}, {name="int8"}]'
DOWN = 'pipeline.downlink=[{name="int8", block_size=64}]'


def _cfg(*extra):
    return load_config(None, [*TINY, *extra])


class Recording(InProcessBackend):
    """The in-process backend, remembering what crossed the wire each round."""

    def __init__(self, runtime):
        super().__init__(runtime)
        self.rounds = []

    def fit(self, broadcast, tasks, on_result=None):
        replies = super().fit(broadcast, tasks, on_result)
        self.rounds.append((len(broadcast.payload), len(tasks), replies))
        return replies


class FailClient(HookBase):
    def before_train(self, ctx: FitContext) -> None:
        if ctx.client_id == 1:
            raise RuntimeError("offline")


class Collect:
    def __init__(self):
        self.records = []

    def on_round_end(self, record):
        self.records.append(record)


def _loop(cfg, tmp_path, hooks=(), stages=()):
    built = build(cfg, extra_hooks=hooks)
    built.uplink.stages.extend(stages)
    backend, collect = Recording(built.runtime), Collect()
    parts = loop_parts(built, backend, tmp_path, [collect], None)
    run_rounds(parts, built.strategy.initialize(built.initial_state))
    return parts, backend, [r for r in collect.records if r.round > 0]


@pytest.mark.parametrize("pipelines", [(), (UP, DOWN)], ids=["fp32", "compressed"])
def test_bytes_are_the_serialised_payload_sizes(pipelines, tmp_path):
    # Execute
    _, backend, rounds = _loop(_cfg(*pipelines), tmp_path, hooks=[FailClient()])
    # Assert: up = every payload received; down = the one broadcast times the clients asked
    assert len(rounds) == len(backend.rounds) == 3
    for record, (broadcast, asked, replies) in zip(rounds, backend.rounds, strict=True):
        assert record.bytes_up == sum(len(r.payload) for r in replies if r.ok) > 0
        assert record.bytes_down == broadcast * asked
    assert any(r.num_failures for r in rounds)  # client 1 failed and sent nothing
    if pipelines:  # the stage metrics of both directions reach the round record
        assert {"topk/ratio", "int8/rel_error", "downlink/int8/ratio"} <= set(rounds[0].extra)


def test_default_pipelines_record_no_codec_metrics(tiny_cfg, tmp_path):
    run(tiny_cfg, tmp_path)
    assert not any("/" in k for r in records(tmp_path) for k in r)
    assert "stopped" not in json.loads((tmp_path / "summary.json").read_text())


def test_residuals_survive_kill_and_resume_bit_identically(tmp_path):
    # Prepare
    cfg = _cfg(UP, DOWN)
    full = run(cfg, tmp_path / "full")
    # Execute
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", callbacks=[StopAfter(1)])
    saved = load_checkpoint(tmp_path / "crash").section("clients")
    resumed = run(stored_config(tmp_path / "crash"), tmp_path / "crash", resume=True)
    # Assert
    assert saved and all("/ef.update/" in k for k in saved)
    assert states_equal(full, resumed)
    a = load_checkpoint(tmp_path / "full").section("clients")
    b = load_checkpoint(tmp_path / "crash").section("clients")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if "seconds" not in k} for r in rs]  # noqa: E731
    assert strip(records(tmp_path / "full")) == strip(records(tmp_path / "crash"))


def _round_bytes(run_dir):
    return [r["bytes_up"] + r["bytes_down"] for r in records(run_dir) if r["round"] > 0]


def _unlimited(tmp_path):
    """Bytes per round of the run without a budget."""
    run(_cfg(UP), tmp_path / "free")
    return _round_bytes(tmp_path / "free")


def test_the_budget_stops_before_a_round_that_would_exceed_it(tmp_path):
    # Prepare: the bytes of an unlimited run
    per_round = _unlimited(tmp_path)
    total = sum(per_round)
    # Execute
    run(_cfg(UP, f"comm.max_bytes={total}"), tmp_path / "exact")
    run(_cfg(UP, f"comm.max_bytes={total - 1}"), tmp_path / "short")
    # Assert: exactly the budget is allowed; one byte less stops before round 3
    assert _round_bytes(tmp_path / "exact") == per_round
    assert "stopped" not in json.loads((tmp_path / "exact" / "summary.json").read_text())
    assert _round_bytes(tmp_path / "short") == per_round[:2]
    summary = json.loads((tmp_path / "short" / "summary.json").read_text())
    assert summary["stopped"].startswith(f"stopped before round 3: comm.max_bytes = {total - 1}")
    assert summary["bytes_up_total"] + summary["bytes_down_total"] <= total - 1


def test_a_resumed_run_counts_the_bytes_before_the_resume(tmp_path):
    # Prepare: rounds 2 and 3 alone fit the budget; rounds 1 to 3 do not
    per_round = _unlimited(tmp_path)
    budget = sum(per_round) - 1
    assert per_round[1] + per_round[2] <= budget
    cfg = _cfg(UP, f"comm.max_bytes={budget}")
    # Execute
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "crash", callbacks=[StopAfter(1)])
    run(stored_config(tmp_path / "crash"), tmp_path / "crash", resume=True)
    # Assert
    assert _round_bytes(tmp_path / "crash") == per_round[:2]
    summary = json.loads((tmp_path / "crash" / "summary.json").read_text())
    assert summary["stopped"].startswith("stopped before round 3")


class Accountant(StageBase):
    """A stand-in for a privacy accountant: its budget allows two rounds."""

    name = "accountant"

    def encode(self, update, ctx):
        return update, {}

    def stop_reason(self, server_round):
        return f"stopped before round {server_round}: budget spent" if server_round > 2 else None


def test_a_stage_can_stop_the_run_before_a_round(tmp_path):
    parts, backend, rounds = _loop(_cfg(), tmp_path, stages=[Accountant()])
    assert [r.round for r in rounds] == [1, 2] and len(backend.rounds) == 2
    assert parts.stopped == "stopped before round 3: budget spent"
