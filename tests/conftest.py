"""Shared fixtures: a tiny config that runs in seconds."""

from __future__ import annotations

import os
import warnings

import pytest

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


@pytest.fixture
def tiny_cfg() -> Config:
    """A 3-round job on a random 2-layer BERT and generated data."""
    return load_config(None, TINY)
