"""The filters of `fedfm synth`, alone: each rejects what it should, once, and counts it."""

import numpy as np
import pytest

from fedfm.synth.filters import (
    REASONS,
    FilterSettings,
    OverlapIndex,
    filter_candidates,
    jaccard,
    ngrams,
    normalise,
    words,
)

TEN = "the film is a slow and quiet study of grief"  # 10 words
SEEDS = ["a brave and tender film about two sisters and their mother"]
TEST = ["an utterly joyless remake that forgets every reason the original worked"]


def _run(texts, labels, classify=None, **settings):
    return filter_candidates(
        texts,
        labels,
        FilterSettings(**settings),
        OverlapIndex(SEEDS, 6),
        OverlapIndex(TEST, 6),
        classify,
    )


def test_normalise_words_ngrams_and_jaccard():
    assert normalise("  The  FILM's  great!! ") == "the film's great"
    assert words("Ｆｕｌｌ-width, isn't it?") == ["full", "width", "isn't", "it"]
    assert ngrams(["a", "b", "c"], 2) == {("a", "b"), ("b", "c")}
    assert ngrams(["a"], 3) == {("a",)} and ngrams([], 3) == set()
    assert jaccard({("a",)}, {("a",), ("b",)}) == 0.5
    assert jaccard(set(), set()) == 0.0


def test_overlap_index_exact_copy_and_ngram_share():
    index = OverlapIndex(TEST, 3)
    assert (
        index.share("An utterly JOYLESS remake, that forgets every reason the original worked.")
        == 1
    )
    # 3 of this text's 4 trigrams occur in the test text
    assert index.share("utterly joyless remake that forgets rocks") == pytest.approx(0.75)
    assert index.share("nothing in common here at all") == 0.0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("too short", "length"),
        (" ".join(["word"] * 61), "length"),
        ("A brave and tender film about two sisters and their mother!", "seed_overlap"),
        ("so a brave and tender film about two sisters, I said", "seed_overlap"),
        ("an utterly joyless remake that forgets every reason", "test_overlap"),
    ],
)
def test_each_per_text_filter_rejects_and_counts_once(text, reason):
    # Execute
    result = _run([TEN, text], [0, 0])
    # Assert
    assert result.kept == [0]
    assert result.reasons == {1: reason}
    counts = result.counts[0]
    assert counts[reason] == 1 and counts["generated"] == 2 and counts["kept"] == 1
    assert sum(counts[r] for r in REASONS) == 1


def test_duplicates_exact_after_normalising_and_near_by_jaccard():
    # Prepare: 10 words give 8 trigram shingles; changing the last word shares 7 of 9
    near = TEN.rsplit(" ", 1)[0] + " loss"
    other = "a loud and cheerful caper with nothing on its mind"
    texts = [TEN, TEN.upper() + "!", near, other]
    # Execute
    loose = _run(texts, [0, 0, 1, 1], near_duplicate=0.7)
    strict = _run(texts, [0, 0, 1, 1], near_duplicate=0.8)
    # Assert: duplicates are found across classes, against kept texts only
    assert loose.kept == [0, 3]
    assert loose.reasons == {1: "exact_duplicate", 2: "near_duplicate"}
    assert loose.counts[1]["near_duplicate"] == 1
    assert strict.kept == [0, 2, 3]


def test_label_check_rejects_disagreements_before_duplicates_are_decided():
    # Prepare: the classifier rejects the first copy; the second copy is then not a duplicate
    texts = [TEN, TEN, "a loud and cheerful caper with nothing on its mind"]
    calls = []

    def classify(batch):
        calls.append(list(batch))
        return np.array([1, 0, 0])  # disagrees with the first text only

    # Execute
    result = _run(texts, [0, 0, 0], classify)
    # Assert: only the survivors of the cheap filters are classified, once
    assert calls == [texts]
    assert result.reasons == {0: "label"}
    assert result.kept == [1, 2]


def test_counts_add_up_per_class():
    texts = [TEN, TEN, "short", SEEDS[0], TEST[0], "a loud and cheerful caper with nothing on it"]
    labels = [0, 1, 1, 0, 1, 0]
    result = _run(texts, labels, lambda batch: np.zeros(len(batch), dtype=np.int64))
    for y, counts in result.counts.items():
        assert counts["generated"] == labels.count(y)
        assert counts["generated"] == counts["kept"] + sum(counts[r] for r in REASONS)
    assert len(result.kept) + len(result.reasons) == len(texts)
