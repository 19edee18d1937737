"""From one dataset to federated data: central test split, client shards, local splits."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    """The examples, the central held-out test indices, and every client's split.

    `server_pool` holds examples no client and no test split sees (reserved by `federate`
    for server-side distillation, used without their labels); empty by default.
    """

    examples: Examples
    central_test: np.ndarray
    clients: dict[int, ClientData]
    server_pool: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def client_ids(self) -> list[int]:
        """Client ids, sorted."""
        return sorted(self.clients)


def federate(
    dataset: Examples,
    data_cfg: DataConfig,
    part_cfg: PartitionConfig,
    seed: int,
    reserve: int = 0,
) -> FederatedData:
    """Hold out a central test set, partition the rest, split each client train/test.

    Args:
        dataset: the task's examples (partitioned on `partition_labels` and `groups`).
        data_cfg: sizes of the central and local test splits.
        part_cfg: the partitioner and its parameters.
        seed: one seed for all three random steps.
        reserve: how many examples after the central test split go to `server_pool`
            instead of the clients (0 leaves every other draw unchanged).

    Returns:
        The federated data; identical for identical arguments.
    """
    rng = np.random.default_rng([seed, 0xDA7A])
    n = len(dataset)
    if data_cfg.test_size >= n:
        raise ConfigError(f"data.test_size={data_cfg.test_size} must be below the {n} examples")
    if data_cfg.test_size + reserve >= n:
        raise ConfigError(
            f"strategy.server_examples={reserve} plus data.test_size={data_cfg.test_size} "
            f"must be below the {n} examples"
        )
    perm = rng.permutation(n)
    central = np.sort(perm[: data_cfg.test_size])
    server = np.sort(perm[data_cfg.test_size : data_cfg.test_size + reserve])
    pool = np.sort(perm[data_cfg.test_size + reserve :])
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
    return FederatedData(dataset, central, clients, server)
