"""Metrics shared by classification tasks: accuracy and mean cross-entropy."""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch

from fedfm.tasks.base import Batch, Examples, Task


class Classifier(Task, Protocol):
    """A task whose model gives class logits (what `classification_metrics` needs)."""

    def logits(self, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """[batch, num_classes] logits."""
        ...


class ClassifierMixin:
    """`loss` and `evaluate` of a classification task, from its `logits` and `batches`."""

    def loss(self: Classifier, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean cross-entropy of the batch."""
        return torch.nn.functional.cross_entropy(self.logits(module, batch), batch["labels"])

    def evaluate(
        self: Classifier,
        module: torch.nn.Module,
        examples: Examples,
        indices: np.ndarray,
        batch_size: int,
    ) -> dict[str, float]:
        """Accuracy and mean cross-entropy (0 examples gives NaN for both)."""
        return classification_metrics(self, module, examples, indices, batch_size)


def classification_metrics(
    task: Classifier,
    module: torch.nn.Module,
    examples: Examples,
    indices: np.ndarray,
    batch_size: int,
) -> dict[str, float]:
    """Accuracy and mean cross-entropy, batched in evaluation order, under `inference_mode`.

    Returns:
        `accuracy`, `loss` and `num_examples` (0 examples gives NaN accuracy and loss).
    """
    if len(indices) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "num_examples": 0.0}
    module.eval()
    correct = 0
    loss_sum = 0.0
    with torch.inference_mode():
        for batch in task.batches(examples, indices, batch_size, None):
            logits = task.logits(module, batch)
            labels = batch["labels"]
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(dim=-1) == labels).sum())
    n = len(indices)
    return {"accuracy": correct / n, "loss": loss_sum / n, "num_examples": float(n)}
