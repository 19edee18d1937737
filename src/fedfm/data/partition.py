"""Partitioners: split a pool of examples into client shards, deterministically for a seed.

Every partitioner returns one sorted int64 index array per client, indices into the pool.
They never loop until luck strikes: size minimums are met by a deterministic repair step,
so Dirichlet with alpha = 0.01 finishes as fast as alpha = 100.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedfm.config import PartitionConfig
from fedfm.errors import ConfigError

Shards = list[np.ndarray]


def iid(n: int, num_clients: int, rng: np.random.Generator) -> Shards:
    """Shuffle and cut into `num_clients` near-equal shards."""
    _need(n >= num_clients, f"partition.num_clients={num_clients} exceeds the {n} examples")
    return [np.sort(s) for s in np.array_split(rng.permutation(n), num_clients)]


def dirichlet(
    labels: np.ndarray, num_clients: int, alpha: float, min_size: int, rng: np.random.Generator
) -> Shards:
    """Label skew: for each class, client proportions ~ Dir(alpha) (Hsu et al. 2019,
    https://arxiv.org/abs/1909.06335).

    Clients left with fewer than `min_size` examples take examples from the largest client,
    one at a time, so the result always exists when `num_clients * min_size <= n`.
    """
    n = len(labels)
    _need(
        num_clients * min_size <= n,
        f"partition.min_size={min_size} x partition.num_clients={num_clients} exceeds {n} examples",
    )
    owner = np.empty(n, dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        props = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(props)[:-1] * len(idx)).astype(np.int64)
        for client, part in enumerate(np.split(idx, cuts)):
            owner[part] = client
    return _repair_min_size(owner, num_clients, min_size, rng)


def shards(
    labels: np.ndarray, num_clients: int, labels_per_client: int, rng: np.random.Generator
) -> Shards:
    """Pathological label skew: each client holds exactly `labels_per_client` classes.

    Client c gets classes (c*k + j) mod K for j < k, so every class is used as evenly as
    possible; each class's examples are shuffled and split evenly among its holders.
    """
    classes = np.unique(labels)
    k, num_classes = labels_per_client, len(classes)
    _need(
        k <= num_classes,
        f"partition.shards_per_client={k} exceeds the {num_classes} classes of the dataset",
    )
    holders: dict[int, list[int]] = {int(c): [] for c in classes}
    for client in range(num_clients):
        for j in range(k):
            holders[int(classes[(client * k + j) % num_classes])].append(client)
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c, who in holders.items():
        if not who:
            continue
        idx = rng.permutation(np.flatnonzero(labels == c))
        _need(len(idx) >= len(who), f"class {c} has fewer examples than clients holding it")
        for client, part in zip(who, np.array_split(idx, len(who)), strict=True):
            parts[client].append(part)
    return [np.sort(np.concatenate(p)) for p in parts]


def quantity(
    n: int, num_clients: int, sigma: float, min_size: int, rng: np.random.Generator
) -> Shards:
    """Quantity skew: client sizes ~ LogNormal(0, sigma), at least `min_size`; content IID."""
    _need(
        num_clients * min_size <= n,
        f"partition.min_size={min_size} x partition.num_clients={num_clients} exceeds {n} examples",
    )
    weights = rng.lognormal(0.0, sigma, num_clients)
    spare = n - num_clients * min_size
    extra = np.floor(weights / weights.sum() * spare).astype(np.int64)
    extra[np.argsort(-weights)[: spare - int(extra.sum())]] += 1  # hand out the remainder
    sizes = extra + min_size
    perm = rng.permutation(n)
    return [np.sort(s) for s in np.split(perm, np.cumsum(sizes)[:-1])]


def natural(groups: np.ndarray, num_clients: int, rng: np.random.Generator) -> Shards:
    """Natural split: whole groups (movies, speakers) go to clients, never split.

    With more groups than clients, groups are packed largest first onto the currently
    smallest client (ties broken by a seeded shuffle), so sizes come out balanced.
    """
    names, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    _need(
        len(names) >= num_clients,
        f"partition.num_clients={num_clients} exceeds the {len(names)} natural groups",
    )
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]
    sizes = np.zeros(num_clients, dtype=np.int64)
    owner_of_group = np.empty(len(names), dtype=np.int64)
    for g in order:
        client = int(np.argmin(sizes))
        owner_of_group[g] = client
        sizes[client] += counts[g]
    owner = owner_of_group[inverse]
    return [np.flatnonzero(owner == c) for c in range(num_clients)]


def partition(
    cfg: PartitionConfig,
    labels: np.ndarray,
    groups: np.ndarray | None,
    rng: np.random.Generator,
) -> Shards:
    """Dispatch on `cfg.name`.

    Raises:
        ConfigError: the split is impossible for this data (names the field).
    """
    builders: dict[str, Callable[[], Shards]] = {
        "iid": lambda: iid(len(labels), cfg.num_clients, rng),
        "dirichlet": lambda: dirichlet(labels, cfg.num_clients, cfg.alpha, cfg.min_size, rng),
        "shards": lambda: shards(labels, cfg.num_clients, cfg.shards_per_client, rng),
        "quantity": lambda: quantity(
            len(labels), cfg.num_clients, cfg.quantity_sigma, cfg.min_size, rng
        ),
        "natural": lambda: natural(_need_groups(groups), cfg.num_clients, rng),
    }
    return builders[cfg.name]()


def _need_groups(groups: np.ndarray | None) -> np.ndarray:
    if groups is None:
        raise ConfigError("partition.name='natural' needs a dataset with a natural column")
    return groups


def _repair_min_size(
    owner: np.ndarray, num_clients: int, min_size: int, rng: np.random.Generator
) -> Shards:
    sizes = np.bincount(owner, minlength=num_clients)
    for client in np.flatnonzero(sizes < min_size):
        while sizes[client] < min_size:
            donor = int(np.argmax(sizes))
            take = min(min_size - sizes[client], sizes[donor] - min_size)
            pool = np.flatnonzero(owner == donor)
            moved = rng.choice(pool, size=take, replace=False)
            owner[moved] = client
            sizes[donor] -= take
            sizes[client] += take
    return [np.flatnonzero(owner == c) for c in range(num_clients)]


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
