"""Atomic checkpoints with named sections: global state, strategy, clients, pipeline, ...

Layout in RUN_DIR: `checkpoint-<round>.safetensors` (tensors named `<section>/<name>`) and
`checkpoint.json`, the commit point, which names that file and holds each section's
non-tensor values and tensor order. Each file is written to a temporary name, fsynced and
renamed, so a crash at any moment leaves the previous checkpoint intact. Everything read back
is checked: the tensor file name must be a checkpoint name inside the run directory, and a
malformed JSON document is a `CheckpointError`, never a `KeyError`.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from fedfm.errors import CheckpointError
from fedfm.rundir import CHECKPOINT, CHECKPOINT_TENSORS
from fedfm.state import State

JSON_NAME = CHECKPOINT
_TENSOR_FILE = re.compile(r"^checkpoint-\d+\.safetensors$")
_SECTION = re.compile(r"^[a-z_]+$")

Section = Mapping[str, Any]  # name -> tensor or JSON-able value


@dataclass(frozen=True)
class Checkpoint:
    """What a run needs to continue after `server_round`.

    Attributes:
        server_round: the last completed round.
        sections: section name -> its entries (tensors in their saved order, then values).
        meta: JSON-able extras (config, seed, last metrics record).
    """

    server_round: int
    sections: dict[str, dict[str, Any]]
    meta: dict[str, Any]

    @property
    def global_state(self) -> State:
        """The `global` section: the global trainable state."""
        return dict(self.sections.get("global", {}))

    def section(self, name: str) -> dict[str, Any]:
        """One section (empty when absent)."""
        return dict(self.sections.get(name, {}))


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
    run_dir: Path, server_round: int, sections: Mapping[str, Section], meta: dict[str, Any]
) -> Path:
    """Write the checkpoint of `server_round` atomically and drop the previous one.

    Args:
        run_dir: the run directory.
        server_round: the last completed round.
        sections: e.g. `{"global": state, "strategy": strategy.state_dict(), "clients":
            store.state_dict()}`; tensors go to safetensors, other values to JSON.
        meta: JSON-able extras (config, seed, last metrics record).

    Returns:
        Path of the JSON commit file.
    """
    tensors: dict[str, torch.Tensor] = {}
    doc_sections: dict[str, dict[str, Any]] = {}
    for section, entries in sections.items():
        if not _SECTION.match(section):
            raise ValueError(f"checkpoint section name {section!r} must match {_SECTION.pattern}")
        order, values = [], {}
        for k, v in entries.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{section}/{k}"] = v.detach().contiguous()
                order.append(k)
            else:
                values[k] = v
        doc_sections[section] = {"tensors": order, "values": values}
    name = CHECKPOINT_TENSORS.format(round=server_round)
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
    doc = {"server_round": server_round, "tensors": name, "sections": doc_sections, "meta": meta}
    path = run_dir / JSON_NAME
    atomic_write_bytes(path, json.dumps(doc, indent=1).encode())
    old = previous.get("tensors") if isinstance(previous, dict) else None
    if isinstance(old, str) and old != name and _TENSOR_FILE.match(old):
        (run_dir / old).unlink(missing_ok=True)
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    """Read the last committed checkpoint of `run_dir`.

    Raises:
        CheckpointError: no checkpoint, a malformed commit file, a tensor file name outside
            the run directory, or a missing or unreadable tensor file.
    """
    doc = _read_json(run_dir)
    if doc is None:
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {JSON_NAME})")
    server_round, name, sections, meta = _parse(run_dir, doc)
    try:
        tensors = load_file(str(run_dir / name))
    except Exception as exc:
        raise CheckpointError(f"checkpoint tensors unreadable in {run_dir}: {exc}") from exc
    out: dict[str, dict[str, Any]] = {}
    for section, spec in sections.items():
        entries: dict[str, Any] = {}
        for k in spec["tensors"]:
            key = f"{section}/{k}"
            if key not in tensors:
                raise CheckpointError(f"{run_dir / name} lacks the tensor {key!r}")
            entries[k] = tensors[key]
        entries.update(spec["values"])
        out[section] = entries
    return Checkpoint(server_round, out, meta)


def last_round(run_dir: Path) -> int:
    """The round of the last committed checkpoint, read without loading its tensors.

    Raises:
        CheckpointError: no checkpoint in `run_dir`, or a malformed one.
    """
    doc = _read_json(run_dir)
    if doc is None:
        raise CheckpointError(f"no checkpoint in {run_dir} (expected {JSON_NAME})")
    return _parse(run_dir, doc)[0]


def remove_checkpoint(run_dir: Path) -> None:
    """Delete the commit file first (so nothing can resume from it), then every tensor file."""
    (run_dir / JSON_NAME).unlink(missing_ok=True)
    _fsync_dir(run_dir)
    for path in run_dir.glob("checkpoint-*.safetensors"):
        if _TENSOR_FILE.match(path.name):
            path.unlink()


def _parse(
    run_dir: Path, doc: dict[str, Any]
) -> tuple[int, str, dict[str, dict[str, Any]], dict[str, Any]]:
    where = run_dir / JSON_NAME
    server_round, name = doc.get("server_round"), doc.get("tensors")
    sections, meta = doc.get("sections"), doc.get("meta", {})
    if type(server_round) is not int or server_round < 1:
        raise CheckpointError(f"{where}: 'server_round' must be a positive integer")
    if not isinstance(name, str) or not _TENSOR_FILE.match(name):
        raise CheckpointError(f"{where}: 'tensors' must name a checkpoint-<round>.safetensors file")
    if not isinstance(sections, dict) or not isinstance(meta, dict):
        raise CheckpointError(f"{where}: 'sections' and 'meta' must be JSON objects")
    for section, spec in sections.items():
        ok = (
            isinstance(spec, dict)
            and isinstance(spec.get("tensors"), list)
            and all(isinstance(k, str) for k in spec["tensors"])
            and isinstance(spec.get("values"), dict)
        )
        if not ok:
            raise CheckpointError(f"{where}: section {section!r} is malformed")
    return server_round, name, sections, meta


def _read_json(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / JSON_NAME
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return doc


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
