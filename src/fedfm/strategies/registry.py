"""Strategy names -> constructors (one line per strategy)."""

from __future__ import annotations

from collections.abc import Callable

from fedfm.config import StrategyConfig
from fedfm.errors import ConfigError
from fedfm.strategies.base import ClientSampler, Strategy
from fedfm.strategies.fedavg import FedAvg
from fedfm.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedfm.strategies.lora import ExactLoRA, FFALoRA, FlexLoRA, HetLoRA
from fedfm.strategies.robust import Krum, Median, MultiKrum, NormBound, TrimmedMean
from fedfm.strategies.scaffold import FedProx, Scaffold

Builder = Callable[[StrategyConfig, ClientSampler, int], Strategy]


def _lr(cfg: StrategyConfig, default: float) -> float:
    return default if cfg.server_lr is None else cfg.server_lr


def _fedopt(kind: type[FedAdam] | type[FedYogi]) -> Builder:
    return lambda c, s, n: kind(s, _lr(c, 1e-2), c.beta1, c.beta2, c.tau)


def client_ranks(cfg: StrategyConfig, num_clients: int, default_rank: int) -> list[int]:
    """Each client's LoRA rank: `lora_ranks` per client when it lists one per client,
    otherwise its ranks are dealt to clients in turn (client c gets ranks[c % len])."""
    ranks = cfg.lora_ranks or [default_rank]
    if len(ranks) == num_clients:
        return list(ranks)
    return [ranks[c % len(ranks)] for c in range(num_clients)]


STRATEGIES: dict[str, Builder] = {
    "fedavg": lambda c, s, n: FedAvg(s, _lr(c, 1.0)),
    "fedavgm": lambda c, s, n: FedAvgM(s, _lr(c, 1.0), c.momentum),
    "fedprox": lambda c, s, n: FedProx(s, c.proximal_mu, _lr(c, 1.0)),
    "fedadam": _fedopt(FedAdam),
    "fedyogi": _fedopt(FedYogi),
    "fedadagrad": lambda c, s, n: FedAdagrad(s, _lr(c, 1e-2), tau=c.tau),
    "scaffold": lambda c, s, n: Scaffold(s, n, _lr(c, 1.0)),
    "median": lambda c, s, n: Median(s, _lr(c, 1.0)),
    "trimmed-mean": lambda c, s, n: TrimmedMean(s, c.trim_beta, _lr(c, 1.0)),
    "krum": lambda c, s, n: Krum(s, c.num_byzantine, _lr(c, 1.0)),
    "multi-krum": lambda c, s, n: MultiKrum(s, c.num_byzantine, c.num_selected, _lr(c, 1.0)),
    "norm-bound": lambda c, s, n: NormBound(FedAvg(s, _lr(c, 1.0)), c.norm_bound or 1.0),
    "exact": lambda c, s, n: ExactLoRA(s),
    "ffa-lora": lambda c, s, n: FFALoRA(s, _lr(c, 1.0)),
    "hetlora": lambda c, s, n: HetLoRA(s, client_ranks(c, n, 8)),
    "flexlora": lambda c, s, n: FlexLoRA(s, client_ranks(c, n, 8)),
}


def build_strategy(cfg: StrategyConfig, num_clients: int) -> Strategy:
    """Build the configured strategy with its client sampler.

    `strategy.norm_bound` wraps any strategy in a server-side norm bound.

    Raises:
        ConfigError: unknown name (listing the valid ones) or invalid parameters.
    """
    if cfg.name not in STRATEGIES:
        raise ConfigError(f"strategy.name: {cfg.name!r} is not one of {', '.join(STRATEGIES)}")
    sampler = ClientSampler(cfg.clients_per_round, cfg.fraction, cfg.min_clients)
    try:
        strategy = STRATEGIES[cfg.name](cfg, sampler, num_clients)
        if cfg.norm_bound is not None and cfg.name != "norm-bound":
            strategy = NormBound(strategy, cfg.norm_bound)
    except ValueError as exc:
        raise ConfigError(f"strategy: {exc}") from exc
    return strategy
