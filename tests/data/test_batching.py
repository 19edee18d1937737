import numpy as np

from fedfm.data.batching import bucketed_batches, collate
from fedfm.data.datasets import TextDataset


def test_buckets_cover_indices_once_and_pad_less_than_random():
    # Prepare
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 64, size=1000)
    idx = np.arange(1000)
    # Execute
    batches = bucketed_batches(lengths, idx, 32, np.random.default_rng(1))
    # Assert
    assert sorted(np.concatenate(batches).tolist()) == idx.tolist()
    padded = sum(len(b) * lengths[b].max() for b in batches)
    random_batches = np.array_split(rng.permutation(idx), len(batches))
    padded_random = sum(len(b) * lengths[b].max() for b in random_batches)
    assert padded < 0.8 * padded_random


def test_eval_batches_are_sorted_and_deterministic():
    lengths = np.array([5, 1, 3, 2, 4])
    batches = bucketed_batches(lengths, np.arange(5), 2, None)
    assert [b.tolist() for b in batches] == [[1, 3], [2, 4], [0]]


def test_collate_pads_to_longest_with_mask():
    ds = TextDataset([np.array([5, 6, 7]), np.array([8])], np.array([1, 0]), None, ("a", "b"), "t")
    ids, mask, labels = collate(ds, np.array([0, 1]), pad_id=3)
    assert ids.tolist() == [[5, 6, 7], [8, 3, 3]]
    assert mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert labels.tolist() == [1, 0]
