"""Shared test helpers: a tiny config that runs in seconds, a crash callback, state equality."""

from __future__ import annotations

import json
from pathlib import Path

import torch

TINY = [
    "task.model=tiny-bert",
    "task.max_length=32",
    "task.dataset=synthetic",
    "data.test_size=200",
    "partition.name=iid",
    "partition.num_clients=6",
    "client.batch_size=16",
    "client.lr=0.01",
    "strategy.clients_per_round=3",
    "rounds=3",
    "backend.threads=1",
]

CONFIGS = Path(__file__).parents[1] / "configs"
DIGITS_TOML = CONFIGS / "digits.toml"
DIGITS = ["rounds=3", "backend.threads=1"]  # overrides on top of DIGITS_TOML


class StopAfter:
    """A callback that simulates a crash: raises after round k has been checkpointed."""

    def __init__(self, k: int) -> None:
        self.k = k

    def on_round_end(self, record) -> None:
        if record.round == self.k:
            raise KeyboardInterrupt


def states_equal(a: dict, b: dict) -> bool:
    """Same keys and bitwise-equal tensors."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def records(run_dir: Path) -> list[dict]:
    """The metrics records of a run directory."""
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def toy_config(*extra: str):
    """A digits config small enough for unit tests of the client side (no transformers)."""
    from fedfm.config import load_config

    return load_config(
        DIGITS_TOML,
        [
            *DIGITS,
            "data.max_examples=240",
            "data.test_size=40",
            "partition.name=iid",
            "partition.num_clients=4",
            "strategy.clients_per_round=2",
            "adapter.method=full",
            "task.hidden=8",
            "client.optimizer=sgd",
            "client.lr=0.1",
            "client.grad_clip=null",
            *extra,
        ],
    )


def toy_runtime(cfg, hooks=(), uplink=None, store=None):
    """A `ClientRuntime` on the toy digits config, with the given hooks."""
    from fedfm.build import build_model
    from fedfm.client.runtime import ClientRuntime
    from fedfm.client.state import InMemoryStore
    from fedfm.data.federated import federate
    from fedfm.pipeline import Pipeline
    from fedfm.tasks.registry import build_task

    task = build_task(cfg)
    examples = task.load_examples()
    data = federate(examples, cfg.data, cfg.partition, cfg.seed)
    model = build_model(cfg, task, examples, hooks)
    return ClientRuntime(
        task,
        examples,
        model,
        data.clients,
        cfg.client,
        uplink or Pipeline(),
        hooks,
        store or InMemoryStore(),
        cfg.seed,
    )


def crash_and_resume(cfg, run_dir: Path, after: int = 1):
    """Run `cfg` into `run_dir`, crash it after round `after`, resume it from its
    checkpoint; returns the resumed run's final state."""
    import pytest

    from fedfm.run import run, stored_config

    with pytest.raises(KeyboardInterrupt):
        run(cfg, run_dir, callbacks=[StopAfter(after)])
    return run(stored_config(run_dir), run_dir, resume=True)
