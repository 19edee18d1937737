import numpy as np
import pytest

from fedfm.config import PartitionConfig
from fedfm.data.partition import dirichlet, iid, natural, partition, quantity, shards
from fedfm.errors import ConfigError

LABELS = np.random.default_rng(0).integers(0, 3, size=900)


def _is_partition(parts, n):
    joined = np.concatenate(parts)
    return len(joined) == n and len(np.unique(joined)) == n


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards", "quantity", "natural"])
def test_every_partitioner_covers_each_example_once_and_is_deterministic(name):
    groups = np.array([f"g{i % 40}" for i in range(len(LABELS))])
    cfg = PartitionConfig(name=name, num_clients=10, alpha=0.3, min_size=5)
    a = partition(cfg, LABELS, groups, np.random.default_rng(1))
    b = partition(cfg, LABELS, groups, np.random.default_rng(1))
    assert len(a) == 10
    assert _is_partition(a, len(LABELS))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_dirichlet_tiny_alpha_terminates_and_respects_min_size():
    # Prepare
    labels = np.random.default_rng(0).integers(0, 2, size=2000)
    # Execute
    parts = dirichlet(labels, 100, 0.01, 10, np.random.default_rng(3))
    # Assert
    assert min(len(p) for p in parts) >= 10
    assert _is_partition(parts, 2000)
    # alpha=0.01: most clients are (nearly) single-label
    purity = [np.bincount(labels[p], minlength=2).max() / len(p) for p in parts]
    assert np.median(purity) > 0.9


def test_dirichlet_large_alpha_is_near_balanced():
    parts = dirichlet(LABELS, 5, 1000.0, 1, np.random.default_rng(0))
    shares = np.array([np.bincount(LABELS[p], minlength=3) / len(p) for p in parts])
    assert np.abs(shares - shares.mean(axis=0)).max() < 0.1


def test_dirichlet_impossible_min_size_names_the_field():
    with pytest.raises(ConfigError, match=r"partition\.min_size"):
        dirichlet(LABELS, 100, 0.5, 10, np.random.default_rng(0))


def test_shards_gives_exactly_k_labels_per_client():
    parts = shards(LABELS, 9, 2, np.random.default_rng(0))
    assert all(len(np.unique(LABELS[p])) == 2 for p in parts)
    with pytest.raises(ConfigError, match="shards_per_client"):
        shards(LABELS, 9, 4, np.random.default_rng(0))


def test_quantity_sizes_are_skewed_with_a_floor():
    parts = quantity(900, 10, 1.5, 20, np.random.default_rng(0))
    sizes = sorted(len(p) for p in parts)
    assert sizes[0] >= 20 and sum(sizes) == 900
    assert sizes[-1] > 3 * sizes[0]


def test_natural_keeps_groups_whole_and_balances():
    groups = np.repeat([f"m{i}" for i in range(60)], np.arange(1, 61))
    parts = natural(groups, 6, np.random.default_rng(0))
    owners = {}
    for c, p in enumerate(parts):
        for g in np.unique(groups[p]):
            assert owners.setdefault(g, c) == c
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 60


def test_natural_needs_enough_groups():
    with pytest.raises(ConfigError, match="natural groups"):
        natural(np.array(["a", "b"]), 3, np.random.default_rng(0))


def test_iid_rejects_more_clients_than_examples():
    with pytest.raises(ConfigError, match="num_clients"):
        iid(3, 4, np.random.default_rng(0))
