"""Text classification: a BERT encoder with mean pooling and a linear head (MiniLM by default).

Examples are tokenised once with the model's own tokenizer; batches are length-bucketed and
padded with the tokenizer's pad id; the loss is cross-entropy on the logits; the metrics are
accuracy and mean cross-entropy. Heavy imports (transformers, pandas) happen in the methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from fedfm.tasks.base import Batch, Examples
from fedfm.tasks.classify import ClassifierMixin

if TYPE_CHECKING:
    from fedfm.data.datasets import TextDataset
    from fedfm.models.prototype import MeanPoolEncoder


@dataclass(frozen=True)
class TextClassification(ClassifierMixin):
    """Sequence classification of a packaged text corpus.

    Args:
        model: a text model of the catalogue (`minilm`, `tiny-bert`).
        dataset: a text dataset (`rotten_tomatoes`, `debates`, `synthetic`).
        max_length: truncate each example to this many tokens.
        max_examples: keep a seeded random subset of this size.
        seed: seed of that subset.
        pretrained: start from the packaged weights (`False`: random initialisation).
    """

    model: str = "minilm"
    dataset: str = "rotten_tomatoes"
    max_length: int = 64
    max_examples: int | None = None
    seed: int = 0
    pretrained: bool = True

    name = "text_classification"
    primary_metric = "accuracy"
    peft_task_type: str | None = "SEQ_CLS"
    head_prefixes: tuple[str, ...] = ("classifier.",)
    default_target_modules: tuple[str, ...] = ("query", "value")

    def load_examples(self) -> TextDataset:
        """Read and tokenise the dataset with the model's own tokenizer."""
        from fedfm.data.datasets import load_dataset
        from fedfm.models.catalogue import load_tokenizer

        tokenizer = load_tokenizer(self.model)
        return load_dataset(self.dataset, tokenizer, self.max_length, self.max_examples, self.seed)

    def encode_texts(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of further texts, encoded exactly as `load_examples` encodes its own."""
        from fedfm.data.datasets import tokenize
        from fedfm.models.catalogue import load_tokenizer

        return tokenize(texts, load_tokenizer(self.model), self.max_length)

    def text_encoder(self, batch_size: int = 64) -> MeanPoolEncoder:
        """The task's backbone (without head or adapter) as a mean-pooled sentence encoder,
        from the packaged weights (`pretrained=False`: random, seeded by the task's seed)."""
        from fedfm.models.catalogue import build_model, load_tokenizer
        from fedfm.models.prototype import MeanPoolEncoder

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            backbone = build_model(self.model, 2, self.pretrained).bert
        return MeanPoolEncoder(backbone, load_tokenizer(self.model), self.max_length, batch_size)

    def build_model(self, examples: Examples) -> torch.nn.Module:
        """The catalogue model with a fresh `num_classes`-way head."""
        from fedfm.models.catalogue import build_model

        return build_model(self.model, _text(examples).num_classes, self.pretrained)

    def batches(
        self,
        examples: Examples,
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None,
    ) -> Iterator[Batch]:
        """Length-bucketed batches padded to their longest example (lazily collated)."""
        from fedfm.data.batching import bucketed_batches, collate

        data = _text(examples)
        for batch in bucketed_batches(data.lengths, indices, batch_size, rng):
            ids, mask, labels = collate(data, batch, data.pad_id)
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def logits(self, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """[batch, num_labels] logits."""
        out = module(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits: torch.Tensor = out.logits
        return logits


def _text(examples: Examples) -> TextDataset:
    return cast("TextDataset", examples)
