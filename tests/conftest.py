"""Shared fixtures: a tiny config that runs in seconds."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

from fedfm.config import Config, load_config  # noqa: E402

TINY = [
    "model.name=tiny-bert",
    "model.max_length=32",
    "data.dataset=synthetic",
    "data.test_size=200",
    "partition.name=iid",
    "partition.num_clients=6",
    "client.batch_size=16",
    "client.lr=0.01",
    "strategy.clients_per_round=3",
    "rounds=3",
    "backend.threads=1",
]


class StopAfter:
    """A callback that simulates a crash: raises after round k has been checkpointed."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_round_end(self, record: dict) -> None:
        if record["round"] == self.k:
            raise KeyboardInterrupt


def states_equal(a: dict, b: dict) -> bool:
    """Same keys and bitwise-equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny_cfg() -> Config:
    """A 3-round job on a random 2-layer BERT and generated data."""
    return load_config(None, TINY)
