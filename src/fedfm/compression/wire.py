"""What the codecs share: packing a State's floating tensors into one flat buffer and back,
randomness derived from (seed, round, client, stream), checks of untrusted wire tensors, and
the per-stage metrics.

Packing matters for bytes: safetensors spends about a hundred header bytes per tensor, so a
codec that sent a scale tensor beside every LoRA factor (8 x 384 values) would lose a good
share of what it saves. Codecs therefore put a whole update in a few flat tensors (values,
scales, indices) and the server splits them again with the names and shapes it expects.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from fedfm.errors import TransportError
from fedfm.pipeline import StageContext
from fedfm.state import State, num_bytes


def floating(like: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating tensors (the ones codecs touch), in order."""
    return [k for k, v in like.items() if v.is_floating_point()]


def others(update: Mapping[str, torch.Tensor]) -> State:
    """The non-floating tensors, which codecs pass through unchanged."""
    return {k: v for k, v in update.items() if not v.is_floating_point()}


def flat(update: Mapping[str, torch.Tensor], names: Sequence[str]) -> torch.Tensor:
    """The named tensors concatenated into one float32 vector."""
    if not names:
        return torch.zeros(0)
    return torch.cat([update[k].detach().reshape(-1).float() for k in names])


def unflat(vector: torch.Tensor, like: Mapping[str, torch.Tensor], names: Sequence[str]) -> State:
    """Inverse of `flat`: split, reshape and cast to the dtypes of `like`."""
    sizes = [like[k].numel() for k in names]
    parts = torch.split(vector, sizes) if names else ()
    return {
        k: p.reshape(like[k].shape).to(like[k].dtype) for k, p in zip(names, parts, strict=True)
    }


def meta(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """A tensor without storage that only says shape and dtype (for `wire_like`)."""
    return torch.empty(tuple(shape), dtype=dtype, device="meta")


def generator(ctx: StageContext, salt: str) -> torch.Generator:
    """A torch generator seeded from (seed, round, client, stream, salt): the same draws for
    the same client, round and stream, whichever process encodes, and after a resume."""
    entropy = [
        ctx.seed % 2**64,
        ctx.server_round,
        ctx.client_id + 1,  # the server's broadcast is client -1
        zlib.crc32(ctx.stream.encode()),
        zlib.crc32(salt.encode()),
    ]
    seed = int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) % 2**63
    return torch.Generator().manual_seed(seed)


def expect(
    update: Mapping[str, torch.Tensor], key: str, dtype: torch.dtype, numel: int, who: str
) -> torch.Tensor:
    """The wire tensor `key`, checked to be 1-D with `numel` entries of `dtype`.

    Raises:
        TransportError: missing, or another dtype or length.
    """
    got = update.get(key)
    if got is None:
        raise TransportError(f"{who}: payload lacks {key!r}")
    if got.dtype != dtype or got.dim() != 1 or got.numel() != numel:
        raise TransportError(
            f"{who}: {key!r} is {tuple(got.shape)} {got.dtype}, expected ({numel},) {dtype}"
        )
    return got


def check_keys(update: Mapping[str, torch.Tensor], expected: Sequence[str], who: str) -> None:
    """Raise `TransportError` unless `update` holds exactly the `expected` names."""
    if set(update) != set(expected):
        missing = sorted(set(expected) - set(update))[:3]
        extra = sorted(set(update) - set(expected))[:3]
        raise TransportError(f"{who}: payload keys differ: missing {missing}, unexpected {extra}")


def metrics(
    original: Mapping[str, torch.Tensor],
    decoded: Mapping[str, torch.Tensor],
    wire: Mapping[str, torch.Tensor],
) -> dict[str, float]:
    """`ratio`: the wire tensors' bytes over the fp32 bytes of the input; `rel_error`:
    ||decoded - input|| / ||input|| over the floating tensors (0 for a zero input)."""
    names = floating(original)
    total = sum(original[k].numel() for k in original)
    err = sum(float((decoded[k].double() - original[k].double()).square().sum()) for k in names)
    ref = sum(float(original[k].double().square().sum()) for k in names)
    return {
        "ratio": num_bytes(wire) / (4 * total) if total else 1.0,
        "rel_error": math.sqrt(err / ref) if ref > 0 else 0.0,
    }


def reserved(update: Mapping[str, torch.Tensor], keys: Sequence[str], stage: str) -> None:
    """Refuse an input that already holds one of the stage's wire names."""
    clash = sorted(set(update) & set(keys))
    if clash:
        raise ValueError(f"{stage}: the update already has tensors named {clash}")
