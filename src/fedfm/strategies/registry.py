"""Strategy names -> constructors (one line per strategy)."""

from __future__ import annotations

from collections.abc import Callable

from fedfm.config import StrategyConfig
from fedfm.errors import ConfigError
from fedfm.strategies.base import ClientSampler, Strategy
from fedfm.strategies.fedavg import FedAvg

STRATEGIES: dict[str, Callable[[StrategyConfig, ClientSampler], Strategy]] = {
    "fedavg": lambda cfg, sampler: FedAvg(sampler),
}


def build_strategy(cfg: StrategyConfig) -> Strategy:
    """Build the configured strategy with its client sampler."""
    if cfg.name not in STRATEGIES:
        raise ConfigError(f"strategy.name: {cfg.name!r} is not one of {', '.join(STRATEGIES)}")
    sampler = ClientSampler(cfg.clients_per_round, cfg.fraction, cfg.min_clients)
    return STRATEGIES[cfg.name](cfg, sampler)
