"""Fairness statistics over per-client accuracies (pure functions, no I/O).

Client ids may be ints or their string form (JSON object keys are strings); they are compared
by `str(client_id)`, so `{3: 0.9}` and `{"3": 0.8}` name the same client.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ClientId = int | str
# Mapping keys are invariant: spell out the key types a caller may hold.
PerClient = Mapping[int, float] | Mapping[str, float] | Mapping[ClientId, float]


def _by_str_id(values: PerClient, what: str) -> dict[str, float]:
    """Re-key a per-client mapping by `str(client_id)`, refusing ids that collide."""
    out = {str(k): float(v) for k, v in values.items()}
    if len(out) != len(values):
        raise ValueError(f"{what} names a client twice (e.g. both 3 and '3')")
    return out


def worst10_mean(values: np.ndarray) -> float:
    """Mean of the worst 10% of `values`: the `ceil(n / 10)` smallest, so at least one.

    Args:
        values: one accuracy per client, 1-D and non-empty.

    Returns:
        The mean of the smallest tenth.
    """
    k = -(-len(values) // 10)  # integer ceil(n / 10); 0.1 * 30 would give 3.0000000000000004
    return float(np.sort(values)[:k].mean())


def fairness_stats(
    acc: PerClient,
    num_examples: PerClient | None = None,
    local_only: PerClient | None = None,
) -> dict[str, float]:
    """Summarise how evenly a global model serves the clients.

    Args:
        acc: client id -> accuracy of the global model on that client's local test data.
        num_examples: client id -> local test examples, the weights of `weighted_mean`; every
            client of `acc` must be present. `None` weights clients equally.
        local_only: client id -> accuracy of a model trained on that client's data alone.

    Returns:
        `mean`, `weighted_mean`, `worst10` (mean of the worst 10% of clients, at least one),
        `std` (population std), `min`, `max`, `num_clients`; with `local_only` also
        `share_worse_than_local`, the fraction of clients present in both `acc` and
        `local_only` whose global accuracy is strictly below their local-only accuracy.

    Raises:
        ValueError: `acc` is empty, `num_examples` lacks a client or its weights sum to zero,
            or `local_only` shares no client with `acc`.
    """
    if not acc:
        raise ValueError("fairness_stats needs at least one client accuracy, got none")
    by_id = _by_str_id(acc, "acc")
    ids = sorted(by_id)
    values = np.array([by_id[i] for i in ids], dtype=np.float64)
    stats: dict[str, float] = {
        "mean": float(values.mean()),
        "weighted_mean": float(values.mean()),
        "worst10": worst10_mean(values),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
        "num_clients": len(values),
    }
    if num_examples is not None:
        weights_by_id = _by_str_id(num_examples, "num_examples")
        missing = [i for i in ids if i not in weights_by_id]
        if missing:
            raise ValueError(f"num_examples lacks clients {missing[:5]} that have an accuracy")
        weights = np.array([weights_by_id[i] for i in ids], dtype=np.float64)
        if weights.sum() <= 0:
            raise ValueError("num_examples must sum to a positive number")
        stats["weighted_mean"] = float(np.average(values, weights=weights))
    if local_only is not None:
        local_by_id = _by_str_id(local_only, "local_only")
        common = [i for i in ids if i in local_by_id]
        if not common:
            raise ValueError("local_only shares no client id with acc")
        worse = sum(by_id[i] < local_by_id[i] for i in common)
        stats["share_worse_than_local"] = worse / len(common)
    return stats
