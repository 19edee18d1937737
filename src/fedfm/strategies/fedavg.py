"""FedAvg: the example-weighted mean of client updates (McMahan et al. 2017,
https://arxiv.org/abs/1602.05629).

The maths (`fedfm.state.weighted_mean`, `fedfm.state.apply_update`) is shared by every
strategy; FedAvg is `StrategyBase` itself: reduce by the weighted mean, step by `server_lr`.
"""

from __future__ import annotations

from fedfm.strategies.base import StrategyBase


class FedAvg(StrategyBase):
    """Example-weighted averaging of client updates, applied with a server learning rate.

    Args:
        sampler: who trains each round.
        server_lr: step size on the averaged update (1.0 is plain FedAvg).
    """

    name = "fedavg"
