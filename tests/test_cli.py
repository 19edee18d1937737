"""The `fedfm` command as a user runs it: subprocesses, exit codes, kill -9 and resume."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from fedfm.config import load_config
from fedfm.run import run
from tests.helpers import TINY

FEDFM = [sys.executable, "-m", "fedfm.cli"]


def _run(*args, **kw):
    return subprocess.run([*FEDFM, *args], capture_output=True, text=True, timeout=300, **kw)


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def test_bad_model_name_exits_nonzero_with_one_line():
    proc = _run("run", "--set", "task.model=nope")
    assert proc.returncode != 0
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1
    assert "task.model" in lines[0] and "'minilm' or 'tiny-bert'" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_negative_alpha_exits_nonzero_with_one_line():
    proc = _run("run", "--set", "partition.alpha=-1")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and len(lines) == 1
    assert "partition.alpha" in lines[0] and "greater than 0" in lines[0]


def test_models_and_datasets_list_the_catalogue():
    assert "minilm" in _run("models").stdout
    assert "rotten_tomatoes" in _run("datasets").stdout


def test_show_config_resolves_defaults_and_overrides():
    out = _run("show-config", "--set", "rounds=4", "--set", "eval.federated_every=null").stdout
    assert json.loads(out)["rounds"] == 4
    assert json.loads(out)["eval"]["federated_every"] is None


def test_report_without_metrics_exits_nonzero_with_one_line(tmp_path):
    proc = _run("report", str(tmp_path))
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and len(lines) == 1 and "no metrics" in lines[0]


def test_kill_minus_nine_then_resume_matches_an_uninterrupted_run(tmp_path):
    # Prepare: a run long enough to be killed in the middle
    items = [*TINY, "rounds=8", "client.epochs=3"]
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        [*FEDFM, "run", *_sets(items), "--out", str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "120"},
    )
    # Execute: SIGKILL once two rounds are logged, then resume
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = len(metrics.read_text().splitlines())
    assert done_before_kill < 9, "the run finished before it could be killed"
    resumed = _run("run", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stderr
    # Assert: bitwise equal to an uninterrupted run, and every round logged once
    reference = run(load_config(None, items), tmp_path / "reference")
    ckpt = json.loads((run_dir / "checkpoint.json").read_text())
    assert ckpt["server_round"] == 8
    tensors = load_file(str(run_dir / ckpt["tensors"]))
    assert all(torch.equal(tensors[f"global/{k}"], v) for k, v in reference.items())
    rounds = [json.loads(x)["round"] for x in metrics.read_text().splitlines()]
    assert rounds == list(range(0, 9))


def test_unknown_strategy_exits_with_one_line_listing_the_names():
    proc = _run("run", "--set", "strategy.name=nope")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode != 0 and len(lines) == 1
    assert "strategy.name" in lines[0]
    assert all(name in lines[0] for name in ("'fedavg'", "'scaffold'", "'krum'", "'flexlora'"))


def test_federated_every_null_runs_without_per_client_evaluation(tmp_path):
    proc = _run(
        "run", *_sets([*TINY, "rounds=2", "eval.federated_every=null"]), "--out", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in records] == [0, 1, 2]
    assert not any("client_accuracy" in r for r in records)


def test_importing_the_cli_imports_no_heavy_library():
    heavy = "('transformers', 'peft', 'pandas', 'matplotlib')"
    code = (
        "import sys, fedfm.cli, fedfm.config, fedfm.run; "
        f"print(sorted(m for m in {heavy} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
