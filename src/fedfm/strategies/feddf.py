"""FedDF: FedAvg, then ensemble distillation of the round's client models on the server.

Lin et al. 2020, "Ensemble Distillation for Robust Model Fusion in Federated Learning",
https://arxiv.org/abs/2006.07242. After the example-weighted mean, the server trains the
averaged model to match the mean of the client models' logits (temperature-softened, KL) on
an unlabelled server-side set. The strategy stays pure: the model and the data live behind a
`ServerDistill` callable (built by `fedfm.build` from `fedfm.distill.EnsembleDistiller`),
which the run binds once with `bind_distill`. FedDF must see each client's model, so its
reduction is `"individual"` (secure aggregation and central DP noise are refused for it).
There is no client half: clients train as in FedAvg.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

from fedfm.errors import AggregationError, ConfigError
from fedfm.messages import FitResult
from fedfm.state import State, apply_update
from fedfm.strategies.base import (
    Aggregate,
    ClientSampler,
    Reduction,
    Strategy,
    StrategyBase,
    weighted_average,
)


class ServerDistill(Protocol):
    """The server's distillation step: `start` trained toward the ensemble of `teachers`."""

    def __call__(self, server_round: int, start: State, teachers: Sequence[State]) -> State:
        """Return the distilled state (deterministic for the same arguments)."""
        ...


class FedDF(StrategyBase):
    """FedAvg's sampling and mean, followed by server-side ensemble distillation.

    Args:
        sampler: who trains each round.
        server_lr: step size on the mean update before distillation.
    """

    name = "feddf"
    reduction: Reduction = "individual"

    def __init__(self, sampler: ClientSampler, server_lr: float = 1.0) -> None:
        super().__init__(sampler, server_lr)
        self.distill: ServerDistill | None = None

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """The weighted mean, then the averaged state distilled from the client ensemble.

        Raises:
            AggregationError: no results, or no distillation step was bound.
        """
        if self.distill is None:
            raise AggregationError("feddf has no server distillation step (see bind_distill)")
        mean = weighted_average(results)
        averaged = apply_update(global_state, mean.update, self.server_lr)
        teachers = [apply_update(global_state, r.update, 1.0) for r in results]
        return dataclasses.replace(mean, state=self.distill(server_round, averaged, teachers))

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """The distilled state (FedAvg's step when the aggregate carries none)."""
        if aggregate.state is not None:
            return aggregate.state
        return super().apply(server_round, global_state, aggregate)


def bind_distill(strategy: Strategy, distill: ServerDistill) -> FedDF:
    """Give the `FedDF` inside `strategy` (possibly wrapped) its distillation step.

    Raises:
        ConfigError: `strategy` holds no `FedDF`.
    """
    inner: object = strategy
    while not isinstance(inner, FedDF):
        if not hasattr(inner, "inner"):
            raise ConfigError(f"strategy.name: {strategy.name!r} is not 'feddf'")
        inner = inner.inner
    inner.distill = distill
    return inner
