"""Shared fixtures: a tiny config that runs in seconds (helpers live in tests/helpers.py)."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore", category=FutureWarning)

from fedfm.config import Config, load_config  # noqa: E402
from tests.helpers import TINY  # noqa: E402


@pytest.fixture
def tiny_cfg() -> Config:
    """A 3-round job on a random 2-layer BERT and generated data."""
    return load_config(None, TINY)
