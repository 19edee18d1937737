"""From one dataset to federated data: central test split, client shards, local splits."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedfm.config import DataConfig, PartitionConfig
from fedfm.data.partition import partition
from fedfm.errors import ConfigError
from fedfm.tasks.base import Examples


@dataclass(frozen=True)
class ClientData:
    """One client's examples: indices into the dataset."""

    client_id: int
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class FederatedData:
    """The examples, the central held-out test indices, and every client's split."""

    examples: Examples
    central_test: np.ndarray
    clients: dict[int, ClientData]

    @property
    def client_ids(self) -> list[int]:
        """Client ids, sorted."""
        return sorted(self.clients)


def federate(
    dataset: Examples, data_cfg: DataConfig, part_cfg: PartitionConfig, seed: int
) -> FederatedData:
    """Hold out a central test set, partition the rest, split each client train/test.

    Args:
        dataset: the task's examples (partitioned on `partition_labels` and `groups`).
        data_cfg: sizes of the central and local test splits.
        part_cfg: the partitioner and its parameters.
        seed: one seed for all three random steps.

    Returns:
        The federated data; identical for identical arguments.
    """
    rng = np.random.default_rng([seed, 0xDA7A])
    n = len(dataset)
    if data_cfg.test_size >= n:
        raise ConfigError(f"data.test_size={data_cfg.test_size} must be below the {n} examples")
    perm = rng.permutation(n)
    central = np.sort(perm[: data_cfg.test_size])
    pool = np.sort(perm[data_cfg.test_size :])
    groups = None if dataset.groups is None else dataset.groups[pool]
    shards = partition(part_cfg, dataset.partition_labels[pool], groups, rng)
    clients = {}
    for cid, shard in enumerate(shards):
        idx = pool[shard]
        local = rng.permutation(idx)
        n_test = round(len(local) * data_cfg.client_test_fraction)
        if len(local) - n_test < 1:
            raise ConfigError(
                f"client {cid} has {len(local)} examples: too few for "
                f"data.client_test_fraction={data_cfg.client_test_fraction}"
            )
        clients[cid] = ClientData(cid, np.sort(local[n_test:]), np.sort(local[:n_test]))
    return FederatedData(dataset, central, clients)
