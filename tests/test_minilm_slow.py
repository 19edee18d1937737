"""A short federated run on the real packaged MiniLM and Rotten Tomatoes (marked slow)."""

import json
from pathlib import Path

import pytest

from fedfm.config import load_config
from fedfm.run import run


@pytest.mark.slow
def test_short_federated_run_on_minilm_and_rotten_tomatoes(tmp_path):
    # Prepare: the default job, shrunk to seconds
    cfg = load_config(
        Path(__file__).parents[1] / "configs" / "default.toml",
        [
            "rounds=2",
            "data.max_examples=800",
            "data.test_size=100",
            "partition.num_clients=5",
            "strategy.clients_per_round=2",
            "client.max_steps=2",
            "eval.federated_every=2",
            "eval.personalize_steps=0",
        ],
    )
    # Execute
    run(cfg, tmp_path)
    # Assert: LoRA r=8 on query,value + head = 303,816 serialised bytes per client
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    records = [r for r in map(json.loads, lines) if r["round"] > 0]
    assert [r["bytes_up"] for r in records] == [2 * 303_816, 2 * 303_816]
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in records)
    assert len(records[-1]["client_accuracy"]) == 5
