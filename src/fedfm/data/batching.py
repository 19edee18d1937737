"""Length-bucketed batches: pad less, compute less.

A training step on this CPU is compute bound (DESIGN.md: ~28 ms per review at length 64),
so padding is pure waste. Examples are shuffled, cut into chunks of `bucket` batches, sorted
by length inside each chunk, cut into batches, and the batch order is shuffled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from fedfm.data.datasets import TextDataset


def bucketed_batches(
    lengths: np.ndarray,
    indices: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None,
    bucket: int = 8,
) -> list[np.ndarray]:
    """Group `indices` into batches of similar length.

    Args:
        lengths: token count of every dataset example.
        indices: the examples to batch.
        batch_size: examples per batch (the last may be smaller).
        rng: shuffles examples and batch order; `None` gives a sorted, deterministic
            order (for evaluation).
        bucket: how many batches' worth of examples are sorted together.

    Returns:
        A list of index arrays.
    """
    if rng is None:
        ordered = indices[np.argsort(lengths[indices], kind="stable")]
        return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    shuffled = rng.permutation(indices)
    batches: list[np.ndarray] = []
    chunk = batch_size * bucket
    for start in range(0, len(shuffled), chunk):
        part = shuffled[start : start + chunk]
        part = part[np.argsort(lengths[part], kind="stable")]
        batches.extend(part[i : i + batch_size] for i in range(0, len(part), batch_size))
    order = rng.permutation(len(batches))
    return [batches[i] for i in order]


def shuffled_slices(
    indices: np.ndarray, batch_size: int, rng: np.random.Generator | None
) -> list[np.ndarray]:
    """`indices` shuffled by `rng` (`None`: kept in order) and cut into batches (fixed-size
    inputs such as images need no length bucketing)."""
    order = indices if rng is None else rng.permutation(indices)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(
    dataset: TextDataset, batch: np.ndarray, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad one batch to its longest example with `pad_id` (the tokenizer's).

    Returns:
        input_ids [b, L] int64, attention_mask [b, L] int64, labels [b] int64.
    """
    seqs = [dataset.input_ids[i] for i in batch]
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    labels = torch.from_numpy(dataset.labels[batch])
    return torch.from_numpy(ids), torch.from_numpy(mask), labels
