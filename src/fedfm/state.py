"""`State`: the named tensors that travel, and their safe (de)serialisation.

A `State` is an ordered mapping name -> tensor holding the trainable parameters only
(LoRA factors, prompt embeddings, a head). Updates (new - old) are States too.
Serialisation is safetensors, never pickle; bytes coming back are validated against the
expected names, shapes and dtypes, and checked to be finite, before anyone uses them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.errors import TransportError

State = dict[str, torch.Tensor]

# 256 MiB: larger than full fine-tuning of MiniLM (~90 MB), far below memory limits.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


def clone(state: Mapping[str, torch.Tensor]) -> State:
    """Return a detached, contiguous copy of `state` (same order)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def subtract(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> State:
    """Return `a - b` key by key; both must have the same keys."""
    _check_same_keys(a, b)
    return {k: a[k] - b[k] for k in a}


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> State:
    """Return `a + b` key by key; both must have the same keys."""
    _check_same_keys(a, b)
    return {k: a[k] + b[k] for k in a}


def global_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of all tensors of `state` seen as one flat vector."""
    if not state:
        return 0.0
    return float(torch.linalg.vector_norm(torch.stack([v.float().norm() for v in state.values()])))


def num_bytes(state: Mapping[str, torch.Tensor]) -> int:
    """Raw tensor bytes of `state`, without any serialisation header."""
    return sum(v.numel() * v.element_size() for v in state.values())


def num_params(state: Mapping[str, torch.Tensor]) -> int:
    """Number of scalar entries in `state`."""
    return sum(v.numel() for v in state.values())


def to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise `state` with safetensors (key order is kept in a metadata field)."""
    tensors = {k: v.detach().contiguous() for k, v in state.items()}
    return st_save(tensors, metadata={"order": ",".join(tensors)})


def from_bytes(
    data: bytes,
    like: Mapping[str, torch.Tensor] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> State:
    """Deserialise untrusted bytes into a `State`.

    Args:
        data: safetensors bytes.
        like: when given, the result must have exactly these names, shapes and dtypes.
        max_bytes: reject payloads larger than this before parsing.

    Returns:
        The State, in the order the sender wrote it (or the order of `like`).

    Raises:
        TransportError: the payload is too large, unparsable, has unexpected names,
            shapes or dtypes, or holds non-finite values.
    """
    if len(data) > max_bytes:
        raise TransportError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        raw = st_load(data)
    except Exception as exc:  # safetensors raises several types on garbage
        raise TransportError(f"payload is not valid safetensors: {exc}") from exc
    state = (
        shaped_like(raw, like)
        if like is not None
        else {k: raw[k] for k in _sender_order(data, raw)}
    )
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise TransportError(f"payload tensor {k!r} holds NaN or infinite values")
    return state


def shaped_like(
    state: Mapping[str, torch.Tensor], like: Mapping[str, torch.Tensor], who: str = "payload"
) -> State:
    """`state` in the key order of `like`, after checking names, shapes and dtypes match.

    Raises:
        TransportError: a name is missing or unexpected, or a shape or dtype differs.
    """
    _check_same_keys(state, like, what=who)
    for k, ref in like.items():
        got = state[k]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise TransportError(
                f"{who} tensor {k!r} has shape {tuple(got.shape)} {got.dtype}, "
                f"expected {tuple(ref.shape)} {ref.dtype}"
            )
    return {k: state[k] for k in like}


def _sender_order(data: bytes, raw: Mapping[str, torch.Tensor]) -> list[str]:
    """Key order from the `order` metadata `to_bytes` writes (safetensors sorts keys)."""
    # Header layout: 8-byte little-endian length, then a JSON object with "__metadata__".
    size = int.from_bytes(data[:8], "little")
    try:
        meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    except (ValueError, AttributeError):
        meta = {}
    order = str(meta.get("order", "")).split(",") if meta.get("order") else []
    return order if sorted(order) == sorted(raw) else list(raw)


def _check_same_keys(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], what: str = "state"
) -> None:
    if a.keys() != b.keys():
        missing = sorted(set(b) - set(a))[:3]
        extra = sorted(set(a) - set(b))[:3]
        raise TransportError(f"{what} keys differ: missing {missing}, unexpected {extra}")
