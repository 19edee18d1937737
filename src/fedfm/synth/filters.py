"""Filters for generated examples, each rejection counted by reason and class.

A candidate is tested in this order and rejected by the first test it fails, so each is
counted once: `length` (words outside [min, max]), `seed_overlap` (a copy of a seed: the same
normalised text, or at least `overlap` of its word n-grams in the seeds), `test_overlap` (the
same against the central test split), `label` (the classifier predicts another class), then
`exact_duplicate` and `near_duplicate` (Jaccard similarity of word shingles at least
`near_duplicate`) against the candidates kept before it. Duplicates are checked last, so a
candidate that fails another filter never causes a later one to be dropped as its copy.
Written by hand: a few set operations; no library does exactly this.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

REASONS = (
    "length",
    "seed_overlap",
    "test_overlap",
    "label",
    "exact_duplicate",
    "near_duplicate",
)
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")

Classify = Callable[[list[str]], np.ndarray]  # texts -> [n] predicted class ids


def normalise(text: str) -> str:
    """Lower case, Unicode NFKC, punctuation dropped, words joined by one space."""
    return " ".join(words(text))


def words(text: str) -> list[str]:
    """The lower-cased words of `text` (letters and digits; inner apostrophes kept)."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).lower())


def ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    """The set of contiguous `n`-word tuples (a text shorter than `n` gives one, itself)."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


def jaccard(a: set[tuple[str, ...]], b: set[tuple[str, ...]]) -> float:
    """|a ∩ b| / |a ∪ b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


class OverlapIndex:
    """Reference texts (seeds, a test split) for fast copy checks.

    Args:
        texts: the reference texts.
        n: words per n-gram.
    """

    def __init__(self, texts: Iterable[str], n: int) -> None:
        self.n = n
        self.exact: set[str] = set()
        self.grams: set[tuple[str, ...]] = set()
        for text in texts:
            tokens = words(text)
            self.exact.add(" ".join(tokens))
            self.grams |= ngrams(tokens, n)

    def share(self, text: str) -> float:
        """1.0 for a normalised exact copy, else the share of the text's n-grams found."""
        tokens = words(text)
        if " ".join(tokens) in self.exact:
            return 1.0
        grams = ngrams(tokens, self.n)
        return len(grams & self.grams) / len(grams) if grams else 0.0


@dataclass(frozen=True)
class FilterSettings:
    """Thresholds of the filters (see the module docstring)."""

    min_words: int = 4
    max_words: int = 60
    near_duplicate: float = 0.7
    shingle: int = 3
    overlap: float = 0.5


@dataclass
class FilterResult:
    """Which candidates were kept and why the others were not.

    Attributes:
        kept: indices of the kept candidates, in input order.
        reasons: candidate index -> its rejection reason.
        counts: class id -> {"generated", "kept", and one count per reason}.
    """

    kept: list[int] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    counts: dict[int, dict[str, int]] = field(default_factory=dict)


def filter_candidates(
    texts: Sequence[str],
    labels: Sequence[int],
    settings: FilterSettings,
    seeds: OverlapIndex,
    test: OverlapIndex,
    classify: Classify | None = None,
) -> FilterResult:
    """Run every filter over the candidates; counts add up per class.

    Args:
        texts: the cleaned candidate texts.
        labels: the class each was generated for.
        settings: the thresholds.
        seeds: the seed examples shown in the prompts.
        test: the central test split.
        classify: the label-agreement classifier (`None`: the check is off).

    Returns:
        The kept indices, the reasons and the per-class counts.
    """
    result = FilterResult()
    for y in sorted(set(int(v) for v in labels)):
        result.counts[y] = {"generated": 0, "kept": 0, **dict.fromkeys(REASONS, 0)}
    survivors = []
    for i, (text, y) in enumerate(zip(texts, labels, strict=True)):
        result.counts[int(y)]["generated"] += 1
        n = len(words(text))
        if not settings.min_words <= n <= settings.max_words:
            _reject(result, i, int(y), "length")
        elif seeds.share(text) >= settings.overlap:
            _reject(result, i, int(y), "seed_overlap")
        elif test.share(text) >= settings.overlap:
            _reject(result, i, int(y), "test_overlap")
        else:
            survivors.append(i)
    if classify is not None and survivors:
        predicted = classify([texts[i] for i in survivors])
        agree = [i for i, p in zip(survivors, predicted, strict=True) if int(p) == int(labels[i])]
        for i in sorted(set(survivors) - set(agree)):
            _reject(result, i, int(labels[i]), "label")
        survivors = agree
    seen: set[str] = set()
    kept_shingles: list[set[tuple[str, ...]]] = []
    for i in survivors:
        tokens = words(texts[i])
        key = " ".join(tokens)
        shingles = ngrams(tokens, settings.shingle)
        if key in seen:
            _reject(result, i, int(labels[i]), "exact_duplicate")
        elif any(jaccard(shingles, s) >= settings.near_duplicate for s in kept_shingles):
            _reject(result, i, int(labels[i]), "near_duplicate")
        else:
            seen.add(key)
            kept_shingles.append(shingles)
            result.kept.append(i)
            result.counts[int(labels[i])]["kept"] += 1
    return result


def _reject(result: FilterResult, i: int, y: int, reason: str) -> None:
    result.reasons[i] = reason
    result.counts[y][reason] += 1
