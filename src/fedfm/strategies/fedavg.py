"""FedAvg: the example-weighted mean of client updates (McMahan et al. 2017,
https://arxiv.org/abs/1602.05629)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fedfm.core import FitResult
from fedfm.state import State
from fedfm.strategies.base import StrategyBase


def weighted_mean(updates: Sequence[State], weights: Sequence[float]) -> State:
    """Weighted mean of States, key by key, accumulated in float64.

    Args:
        updates: States with identical keys and shapes.
        weights: non-negative weights, not all zero.

    Returns:
        A State in the dtype of the first update.
    """
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    if len(updates) != len(weights):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    total = float(sum(weights))
    if total <= 0 or any(w < 0 for w in weights):
        raise ValueError(f"weights must be non-negative with a positive sum, got {list(weights)}")
    out: State = {}
    for key, first in updates[0].items():
        acc = torch.zeros(first.shape, dtype=torch.float64)
        for upd, w in zip(updates, weights, strict=True):
            acc.add_(upd[key].to(torch.float64), alpha=w / total)
        out[key] = acc.to(first.dtype)
    return out


def apply_update(global_state: State, delta: State, lr: float = 1.0) -> State:
    """Return `global_state + lr * delta`."""
    return {k: v + lr * delta[k].to(v.dtype) for k, v in global_state.items()}


class FedAvg(StrategyBase):
    """Example-weighted averaging of client updates, applied with a server learning rate.

    Args:
        sampler: who trains each round.
        server_lr: step size on the averaged update (1.0 is plain FedAvg).
    """

    name = "fedavg"

    def aggregate_fit(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> State:
        """New global = global + server_lr * example-weighted mean of the updates."""
        delta = weighted_mean([r.update for r in results], [r.num_examples for r in results])
        return apply_update(global_state, delta, self.server_lr)
