"""Shared helpers for the benchmark scripts: configs from the default job, runs, tables."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from fedfm.config import Config, config_from_dict, load_config, with_defaults
from fedfm.run import run as run_job

ROOT = Path(__file__).resolve().parents[1]

# `--quick`: the default job's shape on a tiny random BERT and generated data (seconds).
QUICK: dict[str, Any] = {
    "task": {"model": "tiny-bert", "dataset": "synthetic", "max_length": 32},
    "partition": {"name": "iid", "num_clients": 12},
    "data": {"test_size": 200},
}


def default_config(changes: dict[str, dict[str, Any] | Any]) -> Config:
    """The default job with sections updated (`{"strategy": {"name": "fedadam"}, ...}`);
    per-client evaluation and personalisation are switched off to save time."""
    raw = load_config(ROOT / "configs" / "default.toml").model_dump()
    raw["eval"].update({"federated_every": None, "personalize_steps": 0})
    for key, value in changes.items():
        if isinstance(value, dict):
            raw[key].update(value)
        else:
            raw[key] = value
    return config_from_dict(raw)


def run(cfg: Config, run_dir: Path) -> list[dict[str, Any]]:
    """Run (or reuse a finished run in `run_dir` with the same config) and return records."""
    done = run_dir / "summary.json"
    stored = run_dir / "config.json"
    same = stored.exists() and with_defaults(json.loads(stored.read_text())) == cfg.model_dump(
        mode="json"
    )  # settings added to fedfm since the run held their defaults
    if done.exists() and same:
        print(f"  reusing {run_dir}")
    else:
        run_job(cfg, run_dir)
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines]


def rounds_to(records: list[dict[str, Any]], target: float) -> str:
    """First round whose central accuracy reaches `target`, or '-'."""
    for r in records:
        if r.get("accuracy") is not None and r["accuracy"] >= target:
            return str(r["round"])
    return "-"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def runs_dir(name: str, quick: bool) -> Path:
    """Where a benchmark keeps its runs: runs/<name>, or a fresh temporary folder in --quick."""
    return Path(tempfile.mkdtemp(prefix=f"{name}-")) if quick else ROOT / "runs" / name
