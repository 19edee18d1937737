"""Nearest-class-prototype classification on sentence embeddings (no training).

Each class's prototype is the mean of the L2-normalised embeddings of its labelled examples;
a text gets the class whose prototype is most cosine-similar to its embedding (Snell et al.
2017, https://arxiv.org/abs/1703.05175, with a frozen encoder). It needs only a handful of
labelled examples, so it serves as the label-agreement check of `fedfm synth` and as a
task's zero-shot (few-shot) baseline. The encoder is any `TextEncoder`; `MeanPoolEncoder`
mean-pools a BERT-style encoder over the attention mask, as all-MiniLM-L6-v2 was trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TextEncoder(Protocol):
    """Texts -> one embedding each."""

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] float embeddings of `texts`."""
        ...


class MeanPoolEncoder:
    """A BERT-style encoder whose last hidden states are averaged over real tokens.

    Args:
        encoder: a module taking `input_ids` and `attention_mask` and returning an output
            with `last_hidden_state` [batch, seq, dim] (e.g. `MeanPoolClassifier.bert`).
        tokenizer: its tokenizer.
        max_length: truncate each text to this many tokens.
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        encoder: torch.nn.Module,
        tokenizer: PreTrainedTokenizerBase,
        max_length: int = 128,
        batch_size: int = 64,
    ) -> None:
        self.encoder, self.tokenizer = encoder, tokenizer
        self.max_length, self.batch_size = max_length, batch_size

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, dim] mean-pooled embeddings, computed under `torch.inference_mode`."""
        out: list[torch.Tensor] = []
        self.encoder.eval()
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                chunk = list(texts[start : start + self.batch_size])
                enc = self.tokenizer(
                    chunk,
                    truncation=True,
                    max_length=self.max_length,
                    padding=True,
                    return_tensors="pt",
                )
                hidden = self.encoder(
                    input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                ).last_hidden_state  # [batch, seq, dim]
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [batch, seq, 1]
                out.append((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0))
        if not out:
            return torch.zeros(0, 0)
        return torch.cat(out)


class PrototypeClassifier:
    """Nearest class prototype by cosine similarity.

    Args:
        encoder: turns texts into embeddings.

    Attributes:
        classes_: [k] the class labels seen by `fit`, sorted.
        prototypes_: [k, dim] the unit-norm mean embedding of each class.
    """

    def __init__(self, encoder: TextEncoder) -> None:
        self.encoder = encoder
        self.classes_: np.ndarray | None = None
        self.prototypes_: torch.Tensor | None = None

    def fit(self, texts: Sequence[str], labels: Sequence[int] | np.ndarray) -> PrototypeClassifier:
        """Compute one prototype per class of `labels`.

        Raises:
            ValueError: no texts, or texts and labels of different lengths.
        """
        y = np.asarray(labels, dtype=np.int64)
        if len(texts) == 0 or len(texts) != len(y):
            raise ValueError(
                f"fit needs as many labels as texts, >= 1 (got {len(texts)}, {len(y)})"
            )
        emb = _unit(self.encoder.encode(texts))
        self.classes_ = np.unique(y)
        protos = [emb[torch.from_numpy(y == c)].mean(dim=0) for c in self.classes_]
        self.prototypes_ = _unit(torch.stack(protos))
        return self

    def scores(self, texts: Sequence[str]) -> torch.Tensor:
        """[n, k] cosine similarity of each text to each class prototype (columns: `classes_`).

        Raises:
            RuntimeError: `fit` has not been called.
        """
        if self.prototypes_ is None:
            raise RuntimeError("PrototypeClassifier: call fit(texts, labels) first")
        if len(texts) == 0:
            return torch.zeros(0, len(self.prototypes_))
        return _unit(self.encoder.encode(texts)) @ self.prototypes_.T

    def predict(self, texts: Sequence[str]) -> np.ndarray:
        """[n] int64: the class of the most similar prototype for each text."""
        sims = self.scores(texts)
        assert self.classes_ is not None  # set with prototypes_ by fit
        return self.classes_[sims.argmax(dim=1).numpy()].astype(np.int64)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)
