"""FedProx (Li et al. 2020, https://arxiv.org/abs/1812.06127): FedAvg whose clients add the
proximal term (mu / 2) * ||w - w_start||^2 to their local loss.

The server half is FedAvg's; the client half `ProximalTerm` adds the term. Both sides read
mu from the same config, so nothing about it travels.
"""

from __future__ import annotations

import torch

from fedfm.client.hooks import FitContext, HookBase
from fedfm.state import clone
from fedfm.strategies.fedavg import FedAvg


class FedProx(FedAvg):
    """FedAvg on the server; its clients run `ProximalTerm(proximal_mu)`.

    Args:
        sampler: who trains each round.
        server_lr: step size on the averaged update.
    """

    name = "fedprox"


class ProximalTerm(HookBase):
    """Adds (mu / 2) * Σ ||p - p_start||² to the local loss (the logged loss excludes it).

    Args:
        mu: the weight of the proximal term, ≥ 0.
    """

    def __init__(self, mu: float) -> None:
        if mu < 0:
            raise ValueError(f"strategy.proximal_mu must be >= 0, got {mu}")
        self.mu = mu

    def before_train(self, ctx: FitContext) -> None:
        """Anchor at the state training starts from."""
        if self.mu == 0:
            return
        anchor = clone(ctx.model_start)
        mu = self.mu

        def proximal(params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
            prox = sum(((p - anchor[n]) ** 2).sum() for n, p in params.items())
            return 0.5 * mu * prox  # type: ignore[return-value]

        ctx.loss_terms.append(proximal)
