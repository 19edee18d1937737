"""Evaluation of the model's current state on a set of examples."""

from __future__ import annotations

import numpy as np
import torch

from fedfm.data.batching import bucketed_batches, collate
from fedfm.data.datasets import TextDataset
from fedfm.models.trainable import TrainableModel


def evaluate(
    model: TrainableModel, dataset: TextDataset, indices: np.ndarray, batch_size: int
) -> dict[str, float]:
    """Accuracy and mean cross-entropy, batched by length under `inference_mode`.

    Returns:
        `accuracy`, `loss` and `num_examples` (0 examples gives NaN accuracy and loss).
    """
    if len(indices) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "num_examples": 0.0}
    model.module.eval()
    correct = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for batch in bucketed_batches(dataset.lengths, indices, batch_size, rng=None):
            ids, mask, labels = collate(dataset, batch)
            logits = model.logits(ids, mask)
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == labels).sum())
    n = len(indices)
    return {"accuracy": correct / n, "loss": loss_sum / n, "num_examples": float(n)}
