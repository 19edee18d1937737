"""Atomic checkpoints: the global trainable state, the strategy's state, and the run's meta.

Layout in RUN_DIR: `checkpoint-<round>.safetensors` (tensors: `global/<name>`,
`strategy/<name>`) and `checkpoint.json`, the commit point, which names that file. Each file
is written to a temporary name, fsynced and renamed, so a crash at any moment leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedfm.errors import CheckpointError
from fedfm.state import State

JSON_NAME = "checkpoint.json"


@dataclass(frozen=True)
class Checkpoint:
    """What a run needs to continue after `server_round`."""

    server_round: int
    global_state: State
    strategy_state: dict[str, Any]
    meta: dict[str, Any]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` via a temporary file, fsync and rename."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def save_checkpoint(
    run_dir: Path,
    server_round: int,
    global_state: State,
    strategy_state: dict[str, Any],
    meta: dict[str, Any],
) -> Path:
    """Write the checkpoint of `server_round` atomically and drop the previous one.

    Args:
        run_dir: the run directory.
        server_round: the last completed round.
        global_state: the global trainable state after that round.
        strategy_state: `Strategy.state_dict()`: tensors go to safetensors, the rest to JSON.
        meta: JSON-able extras (config, seed, last metrics record).

    Returns:
        Path of the JSON commit file.
    """
    tensors = {f"global/{k}": v.detach().contiguous() for k, v in global_state.items()}
    scalars: dict[str, Any] = {}
    for k, v in strategy_state.items():
        if isinstance(v, torch.Tensor):
            tensors[f"strategy/{k}"] = v.detach().contiguous()
        else:
            scalars[k] = v
    name = f"checkpoint-{server_round}.safetensors"
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{name}.")
    os.close(fd)
    try:
        save_file(tensors, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, run_dir / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    previous = _read_json(run_dir)
    doc = {
        "server_round": server_round,
        "tensors": name,
        "global_keys": list(global_state),
        "strategy": scalars,
        "meta": meta,
    }
    path = run_dir / JSON_NAME
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    if previous is not None and previous.get("tensors") not in (None, name):
        (run_dir / previous["tensors"]).unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the last committed checkpoint of `run_dir`.

    Raises:
        CheckpointError: no checkpoint, or its tensor file is missing or unreadable.
    """
    doc = _read_json(run_dir)
    if doc is None:
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {JSON_NAME})")
    try:
        tensors = load_file(str(run_dir / doc["tensors"]))
    except Exception as exc:
        raise CheckpointError(f"checkpoint tensors unreadable in {run_dir}: {exc}") from exc
    global_state = {k: tensors[f"global/{k}"] for k in doc["global_keys"]}
    strategy_state: dict[str, Any] = dict(doc["strategy"])
    for k, v in tensors.items():
        if k.startswith("strategy/"):
            strategy_state[k.removeprefix("strategy/")] = v
    return Checkpoint(int(doc["server_round"]), global_state, strategy_state, doc["meta"])


def last_round(run_dir: Path) -> int:
    """The round of the last committed checkpoint, read without loading its tensors.

    Raises:
        CheckpointError: no checkpoint in `run_dir`.
    """
    doc = _read_json(run_dir)
    if doc is None:
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {JSON_NAME})")
    return int(doc["server_round"])


def _read_json(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / JSON_NAME
    if not path.exists():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    return doc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
