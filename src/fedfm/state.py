"""`State`: the named tensors that travel, and their safe (de)serialisation.

A `State` is an ordered mapping name -> tensor holding the trainable parameters only
(LoRA factors, prompt embeddings, a head). Updates (new - old) are States too.
Serialisation is safetensors, never pickle; bytes coming back are validated against the
expected names, shapes and dtypes, and checked to be finite, before anyone uses them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from fedfm.errors import TransportError

State = dict[str, torch.Tensor]

# 256 MiB: larger than full fine-tuning of MiniLM (~90 MB), far below memory limits.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

# What any pipeline stage may put on the wire. Anything else (float8, complex, bool, ...) is
# refused before a single value is looked at: torch cannot even test float8 for finiteness.
WIRE_DTYPES = frozenset(
    {
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.uint16,
        torch.uint32,
        torch.uint64,
    }
)


def clone(state: Mapping[str, torch.Tensor]) -> State:
    """Return a detached, contiguous copy of `state` (same order)."""
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def subtract(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> State:
    """Return `a - b` key by key; both must have the same keys."""
    check_same_keys(a, b)
    return {k: a[k] - b[k] for k in a}


def add(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> State:
    """Return `a + b` key by key; both must have the same keys."""
    check_same_keys(a, b)
    return {k: a[k] + b[k] for k in a}


def check_weights(weights: Sequence[float], n: int) -> float:
    """Validate aggregation weights and return their sum.

    Raises:
        ValueError: no weights, a count other than `n`, a non-finite or negative weight,
            or a sum that is not positive.
    """
    if n == 0:
        raise ValueError("aggregation needs at least one update")
    if len(weights) != n:
        raise ValueError(f"{n} updates but {len(weights)} weights")
    ws = [float(w) for w in weights]
    total = math.fsum(ws)
    if not all(math.isfinite(w) and w >= 0 for w in ws) or not (0 < total < math.inf):
        raise ValueError(f"weights must be finite, non-negative, with a positive sum: {ws}")
    return float(sum(weights))


def weighted_mean(updates: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> State:
    """Weighted mean of States, key by key, accumulated in float64.

    Args:
        updates: States with identical keys and shapes.
        weights: finite non-negative weights with a positive sum.

    Returns:
        A State in the dtype of the first update.

    Raises:
        ValueError: no updates, or bad weights (see `check_weights`).
    """
    total = check_weights(weights, len(updates))
    out: State = {}
    for key, first in updates[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for upd, w in zip(updates, weights, strict=True):
            acc.add_(upd[key].to(torch.float64), alpha=w / total)
        out[key] = acc.to(first.dtype)
    return out


def apply_update(
    global_state: Mapping[str, torch.Tensor], delta: Mapping[str, torch.Tensor], lr: float = 1.0
) -> State:
    """Return `global_state + lr * delta`."""
    return {k: v + lr * delta[k].to(v.dtype) for k, v in global_state.items()}


def clip_to_norm(update: Mapping[str, torch.Tensor], max_norm: float) -> tuple[State, float]:
    """Scale `update` so that its global L2 norm is at most `max_norm`.

    Returns:
        The (possibly rescaled) update and its norm before clipping.

    Raises:
        ValueError: `max_norm` not positive.
    """
    if max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}")
    norm = global_norm(update)
    if norm <= max_norm:
        return dict(update), norm
    factor = max_norm / norm
    return {k: v * factor for k, v in update.items()}, norm


def all_finite(state: Mapping[str, torch.Tensor]) -> bool:
    """True when every floating tensor of `state` holds only finite values."""
    return all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point())


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
    for k, t in raw.items():
        if t.dtype not in WIRE_DTYPES:
            raise TransportError(f"payload tensor {k!r} has dtype {t.dtype}, not a wire dtype")
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
    check_same_keys(state, like, what=who, error=TransportError)
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


def check_same_keys(
    a: Mapping[str, object],
    b: Mapping[str, object],
    what: str = "state",
    error: type[Exception] = ValueError,
) -> None:
    """Raise `error` naming up to three missing and unexpected keys when `a` and `b` differ."""
    if a.keys() != b.keys():
        missing = sorted(set(b) - set(a))[:3]
        extra = sorted(set(a) - set(b))[:3]
        raise error(f"{what} keys differ: missing {missing}, unexpected {extra}")
