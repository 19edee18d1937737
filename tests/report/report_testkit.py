"""Helpers for the report tests: a tiny synthetic run directory, written as a run writes it.

A plain module (not a conftest) so that tests import it by a unique name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def fake_records(num_rounds: int = 5, num_clients: int = 6) -> list[dict[str, Any]]:
    """Metrics lines: evaluation every other round, federated eval on even rounds."""
    records = []
    for r in range(1, num_rounds + 1):
        evaluated = r % 2 == 0
        clients = [(r + k) % num_clients for k in range(3)]
        record: dict[str, Any] = {
            "round": r,
            "accuracy": 0.5 + 0.05 * r if evaluated else None,
            "loss": 1.0 / r if evaluated else None,
            "train_loss": 1.2 / r,
            "bytes_up": 3000 * r,
            "bytes_down": 5000,
            "num_clients": 3,
            "num_failures": 1 if r == 3 else 0,
            "clients": clients,
            "seconds": 1.5,
            "seconds_fit": 1.0,
            "seconds_aggregate": 0.1,
            "seconds_eval": 0.3 if evaluated else 0.0,
            "seconds_checkpoint": 0.05,
            "epsilon": 0.4 * r,
        }
        if evaluated:
            record["client_accuracy"] = {str(c): 0.4 + 0.1 * c for c in range(num_clients)}
            record["client_num_examples"] = {str(c): 10 + c for c in range(num_clients)}
        records.append(record)
    return records


def write_run(
    root: Path,
    name: str = "run_a",
    records: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
    summary: dict[str, Any] | None = None,
) -> Path:
    """Write `root/name/` with `metrics.jsonl`, `config.json` and optionally `summary.json`."""
    run_dir = root / name
    run_dir.mkdir(parents=True)
    lines = [json.dumps(r) for r in (fake_records() if records is None else records)]
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    default_config = {"strategy": {"name": "FedAvg"}, "rounds": 5, "note": "<b>&</b>"}
    (run_dir / "config.json").write_text(json.dumps(config or default_config))
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def assert_self_contained(html: str) -> None:
    """The page inlines its images and references nothing outside itself."""
    assert "data:image/png;base64," in html
    assert "http://" not in html
    assert "https://" not in html
    assert "<script src" not in html.lower()
    assert "<link" not in html.lower()
