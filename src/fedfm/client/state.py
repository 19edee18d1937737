"""Per-client persistent state: SCAFFOLD's c_i, error-feedback residuals, privacy ledgers.

A client's state is a set of named `State`s (`key` -> name -> tensor). `InMemoryStore`
serves simulation (checkpointed by the server through `state_dict`); `DirectoryStore` keeps
one safetensors file per client, for a deployed client (its own state directory) and for
simulations with very many clients, where memory must not grow with the client count.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file, save_file

from fedfm.errors import CheckpointError
from fedfm.state import State

_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


class ClientStateStore(Protocol):
    """Named States per client, that survive between the rounds a client takes part in."""

    def get(self, client_id: int, key: str) -> State | None:
        """The client's State under `key`, or `None` when it has none."""
        ...

    def put(self, client_id: int, key: str, value: State) -> None:
        """Store (replace) the client's State under `key`."""
        ...

    def delete(self, client_id: int, key: str) -> None:
        """Forget the client's State under `key` (no error when absent)."""
        ...

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything, flat as `<client_id>/<key>/<name>` tensors (for checkpoints)."""
        ...

    def load_state_dict(self, flat: Mapping[str, torch.Tensor]) -> None:
        """Replace everything by what `state_dict` returned."""
        ...


def _check_key(key: str) -> None:
    if not _KEY.match(key):
        raise ValueError(f"client state key {key!r} must match {_KEY.pattern}")


def flatten(client_id: int, key: str, value: State) -> dict[str, torch.Tensor]:
    """`value` as `<client_id>/<key>/<name>` tensors."""
    return {f"{client_id}/{key}/{name}": t for name, t in value.items()}


def unflatten(flat: Mapping[str, torch.Tensor]) -> dict[int, dict[str, State]]:
    """Inverse of `flatten` over many entries: client -> key -> State.

    Raises:
        CheckpointError: a name not of the form `<int>/<key>/<name>`.
    """
    out: dict[int, dict[str, State]] = {}
    for full, tensor in flat.items():
        client, sep1, rest = full.partition("/")
        key, sep2, name = rest.partition("/")
        if not (sep1 and sep2 and client.isdigit() and _KEY.match(key) and name):
            raise CheckpointError(f"client state entry {full!r} is not <client>/<key>/<name>")
        out.setdefault(int(client), {}).setdefault(key, {})[name] = tensor
    return out


class InMemoryStore:
    """Client states in a dict (simulation); the server checkpoints them."""

    def __init__(self) -> None:
        self.states: dict[int, dict[str, State]] = {}

    def get(self, client_id: int, key: str) -> State | None:
        """The client's State under `key`, or `None`."""
        return self.states.get(client_id, {}).get(key)

    def put(self, client_id: int, key: str, value: State) -> None:
        """Store (replace) the client's State under `key`."""
        _check_key(key)
        self.states.setdefault(client_id, {})[key] = value

    def delete(self, client_id: int, key: str) -> None:
        """Forget the client's State under `key`."""
        self.states.get(client_id, {}).pop(key, None)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat `<client_id>/<key>/<name>` tensors, clients in id order."""
        out: dict[str, torch.Tensor] = {}
        for cid in sorted(self.states):
            for key, value in self.states[cid].items():
                out.update(flatten(cid, key, value))
        return out

    def load_state_dict(self, flat: Mapping[str, torch.Tensor]) -> None:
        """Replace everything by what `state_dict` returned."""
        self.states = unflatten(flat)


class DirectoryStore:
    """One safetensors file per client in `root` (`<client_id>.safetensors`), written atomically.

    Memory holds nothing between calls, so a simulation of 100,000 clients or a deployed
    client's own state directory costs disk, not RAM.

    Args:
        root: the directory (created if missing).
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, client_id: int) -> Path:
        return self.root / f"{int(client_id)}.safetensors"

    def _read(self, client_id: int) -> dict[str, State]:
        path = self._path(client_id)
        if not path.exists():
            return {}
        return unflatten(load_file(str(path))).get(client_id, {})

    def _write(self, client_id: int, states: dict[str, State]) -> None:
        path = self._path(client_id)
        if not states:
            path.unlink(missing_ok=True)
            return
        flat = {}
        for key, value in states.items():
            flat.update(flatten(client_id, key, value))
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({k: v.detach().contiguous() for k, v in flat.items()}, str(tmp))
        os.replace(tmp, path)

    def get(self, client_id: int, key: str) -> State | None:
        """The client's State under `key`, or `None`."""
        return self._read(client_id).get(key)

    def put(self, client_id: int, key: str, value: State) -> None:
        """Store (replace) the client's State under `key`."""
        _check_key(key)
        states = self._read(client_id)
        states[key] = value
        self._write(client_id, states)

    def delete(self, client_id: int, key: str) -> None:
        """Forget the client's State under `key`."""
        states = self._read(client_id)
        if states.pop(key, None) is not None:
            self._write(client_id, states)

    def client_ids(self) -> list[int]:
        """Clients with a file, sorted."""
        return sorted(int(p.stem) for p in self.root.glob("*.safetensors") if p.stem.isdigit())

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Flat `<client_id>/<key>/<name>` tensors of every client file."""
        out: dict[str, torch.Tensor] = {}
        for cid in self.client_ids():
            for key, value in self._read(cid).items():
                out.update(flatten(cid, key, value))
        return out

    def load_state_dict(self, flat: Mapping[str, torch.Tensor]) -> None:
        """Replace every client file by what `state_dict` returned."""
        for cid in self.client_ids():
            self._path(cid).unlink()
        for cid, states in unflatten(flat).items():
            self._write(cid, states)
