"""SCAFFOLD: stochastic controlled averaging (Karimireddy et al. 2020,
https://arxiv.org/abs/1910.06378), and FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127).

Server: sends its control variate c with the global state; after the round,
x <- x + server_lr * (example-weighted mean of the updates) and c <- c + (|S| / N) * mean(dc_i)
(the paper's Algorithm 1, lines 16-17). The clients' control variates c_i live on the clients
(`fedfm.client.scaffold`), sized like the trainable state, and survive checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fedfm.core import FitIns, FitResult
from fedfm.state import State
from fedfm.strategies.base import ClientSampler, StrategyBase
from fedfm.strategies.fedavg import FedAvg, apply_update, weighted_mean

SERVER_CONTROL = "server_control"
CONTROL_DELTA = "control_delta"


def server_control_step(control: State, control_deltas: Sequence[State], num_clients: int) -> State:
    """c + (|S| / N) * mean_i(dc_i): the server control variate after a round."""
    mean = weighted_mean(list(control_deltas), [1.0] * len(control_deltas))
    share = len(control_deltas) / num_clients
    return {k: v + share * mean[k] for k, v in control.items()}


class Scaffold(StrategyBase):
    """SCAFFOLD with a server learning rate.

    Args:
        sampler: who trains each round.
        num_clients: N, the number of clients in the federation.
        server_lr: the global step size η_g on the averaged update.
    """

    name = "scaffold"

    def __init__(self, sampler: ClientSampler, num_clients: int, server_lr: float = 1.0) -> None:
        super().__init__(sampler)
        self.num_clients = num_clients
        self.server_lr = server_lr
        self.control_: State | None = None

    def configure_fit(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitIns]:
        """Sample clients; each receives the server control variate with the global state."""
        if self.control_ is None:
            raise RuntimeError("call Scaffold.initialize(global_state) before the first round")
        return [
            FitIns(c, server_round, extra={SERVER_CONTROL: self.control_})
            for c in self.sampler.sample(available, rng)
        ]

    def initialize(self, global_state: State) -> State:
        """Start the server control variate at zero (keeps a restored one)."""
        if self.control_ is None:
            self.control_ = {k: torch.zeros_like(v) for k, v in global_state.items()}
        return global_state

    def aggregate_fit(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> State:
        """Step the model with the mean update and the control with the mean control delta."""
        assert self.control_ is not None
        ordered = sorted(results, key=lambda r: r.client_id)
        delta = weighted_mean([r.update for r in ordered], [r.num_examples for r in ordered])
        deltas = [r.extra[CONTROL_DELTA] for r in ordered]
        self.control_ = server_control_step(self.control_, deltas, self.num_clients)
        return apply_update(global_state, delta, self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        """The server control variate as `c/<name>` tensors."""
        return {f"c/{k}": v for k, v in (self.control_ or {}).items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        control = {k[2:]: v for k, v in state.items() if k.startswith("c/")}
        self.control_ = control or None


class FedProx(FedAvg):
    """FedAvg whose clients add (mu / 2) * ||w - w_global||^2 to their local loss.

    Args:
        sampler: who trains each round.
        proximal_mu: mu, the weight of the proximal term.
        server_lr: step size on the averaged update.
    """

    name = "fedprox"

    def __init__(self, sampler: ClientSampler, proximal_mu: float, server_lr: float = 1.0) -> None:
        super().__init__(sampler, server_lr)
        self.proximal_mu = proximal_mu

    def configure_fit(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitIns]:
        """Sample clients and ask each for the proximal term."""
        return [
            FitIns(c, server_round, config={"proximal_mu": self.proximal_mu})
            for c in self.sampler.sample(available, rng)
        ]
