"""Digits: scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes), a small MLP.

The task proves the `Task` seam without transformers: it needs only torch and numpy. The
CSV is read from scikit-learn's data folder (located, not imported: importing sklearn costs
about a second, more than a whole round of this job).
"""

from __future__ import annotations

import gzip
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch

from fedfm.errors import ConfigError
from fedfm.tasks.base import Batch, Examples
from fedfm.tasks.classify import ClassifierMixin


@dataclass(frozen=True)
class DigitsExamples:
    """Flattened 8x8 images scaled to [0, 1], with their labels.

    Attributes:
        features: [n, 64] float32 pixel intensities.
        labels: [n] int64 digit classes.
    """

    features: np.ndarray
    labels: np.ndarray
    num_classes: int = 10

    @property
    def partition_labels(self) -> np.ndarray:
        """The digit classes."""
        return self.labels

    @property
    def groups(self) -> np.ndarray | None:
        """No natural groups ship with the data (the writers are not recorded)."""
        return None

    def __len__(self) -> int:
        return len(self.labels)


def digits_csv() -> Path:
    """Path of scikit-learn's `digits.csv.gz` (64 pixel columns, then the label)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "task.name='digits' needs the scikit-learn package: pip install scikit-learn"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"


def read_digits(max_examples: int | None = None, seed: int = 0) -> DigitsExamples:
    """Read the 1,797 digits, optionally a seeded random subset of `max_examples`."""
    with gzip.open(digits_csv(), "rt") as fh:
        raw = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    features = raw[:, :64] / 16.0
    labels = raw[:, 64].astype(np.int64)
    if max_examples is not None and max_examples < len(labels):
        keep = np.sort(np.random.default_rng(seed).choice(len(labels), max_examples, replace=False))
        features, labels = features[keep], labels[keep]
    return DigitsExamples(np.ascontiguousarray(features), labels)


class DigitsMLP(torch.nn.Module):
    """64 -> hidden -> hidden -> 10 with ReLU; LoRA targets `fc1`, `fc2`; the head is `head`.

    Args:
        hidden: width of the two hidden layers.
        num_classes: output classes.
    """

    def __init__(self, hidden: int = 64, num_classes: int = 10) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, hidden)
        self.fc2 = torch.nn.Linear(hidden, hidden)
        self.head = torch.nn.Linear(hidden, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[batch, 64] -> [batch, num_classes] logits."""
        h = torch.relu(self.fc1(features))
        return self.head(torch.relu(self.fc2(h)))


@dataclass(frozen=True)
class Digits(ClassifierMixin):
    """Handwritten digit classification with a small MLP, randomly initialised.

    Args:
        hidden: width of the MLP's hidden layers.
        max_examples: keep a seeded random subset of this size.
        seed: seed of that subset.
    """

    hidden: int = 64
    max_examples: int | None = None
    seed: int = 0

    name = "digits"
    primary_metric = "accuracy"
    peft_task_type: str | None = None
    head_prefixes: tuple[str, ...] = ("head.",)
    default_target_modules: tuple[str, ...] = ("fc1", "fc2")

    def load_examples(self) -> DigitsExamples:
        """The bundled digits."""
        return read_digits(self.max_examples, self.seed)

    def build_model(self, examples: Examples) -> torch.nn.Module:
        """A fresh MLP (there is no pre-trained digits model)."""
        return DigitsMLP(self.hidden, _digits(examples).num_classes)

    def batches(
        self,
        examples: Examples,
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None,
    ) -> Iterator[Batch]:
        """Shuffled batches (`rng=None`: in index order)."""
        from fedfm.data.batching import shuffled_slices

        data = _digits(examples)
        for idx in shuffled_slices(indices, batch_size, rng):
            yield {
                "features": torch.from_numpy(data.features[idx]),
                "labels": torch.from_numpy(data.labels[idx]),
            }

    def logits(self, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """[batch, 10] logits."""
        out: torch.Tensor = module(features=batch["features"])
        return out


def _digits(examples: Examples) -> DigitsExamples:
    return cast(DigitsExamples, examples)
