"""Strategy names -> server half and client hooks (one entry per strategy).

Both halves come from the same entry on every machine, so a deployed client and the server
cannot disagree about the algorithm. Each entry's settings are its config class in
`fedfm.strategies.configs` (the name is that class's `name`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fedfm.client.hooks import ClientHook
from fedfm.config import Config
from fedfm.errors import ConfigError
from fedfm.strategies import configs as cfgs
from fedfm.strategies.base import ClientSampler, Strategy, UniformWeights
from fedfm.strategies.configs import STRATEGY_CONFIGS, StrategyConfigBase
from fedfm.strategies.fedavg import FedAvg
from fedfm.strategies.feddf import FedDF
from fedfm.strategies.fedopt import FedAdagrad, FedAdam, FedAvgM, FedYogi
from fedfm.strategies.fedprox import FedProx, ProximalTerm
from fedfm.strategies.lora import ExactLoRA, FFALoRA, FlexLoRA, FreezeA, HetLoRA, RankAdapter
from fedfm.strategies.robust import Krum, Median, MultiKrum, NormBound, TrimmedMean
from fedfm.strategies.scaffold import ControlVariates, Scaffold

# (the strategy's own config section, the sampler, the number of clients) -> server half
Builder = Callable[[Any, ClientSampler, int], Strategy]
Hooks = Callable[[Config], list[ClientHook]]


@dataclass(frozen=True)
class Entry:
    """One strategy: its config section, its server half and its client hooks."""

    config: type[StrategyConfigBase]
    build: Builder
    hooks: Hooks = field(default=lambda cfg: [])

    @property
    def name(self) -> str:
        """The strategy's name (its config class's `name`)."""
        return str(self.config.model_fields["name"].default)


def _lr(cfg: StrategyConfigBase, default: float) -> float:
    return default if cfg.server_lr is None else cfg.server_lr


def _fedopt(kind: type[FedAdam] | type[FedYogi]) -> Builder:
    return lambda c, s, n: kind(s, _lr(c, 1e-2), c.beta1, c.beta2, c.tau)


def client_ranks(cfg: Any, num_clients: int, default_rank: int) -> list[int]:
    """Each client's LoRA rank: `lora_ranks` per client when it lists one per client,
    otherwise its ranks are dealt to clients in turn (client c gets ranks[c % len])."""
    ranks = cfg.lora_ranks or [default_rank]
    if len(ranks) == num_clients:
        return list(ranks)
    return [ranks[c % len(ranks)] for c in range(num_clients)]


def _krum(multi: bool) -> Builder:
    def build(c: Any, s: ClientSampler, n: int) -> Strategy:
        if multi:
            strategy = MultiKrum(s, c.num_byzantine, c.num_selected, _lr(c, 1.0))
        else:
            strategy = Krum(s, c.num_byzantine, _lr(c, 1.0))
        strategy.check_round_size(s.num_to_sample(n))  # refuse what can never aggregate
        return strategy

    return build


_ENTRIES = (
    Entry(cfgs.FedAvgConfig, lambda c, s, n: FedAvg(s, _lr(c, 1.0))),
    Entry(cfgs.FedAvgMConfig, lambda c, s, n: FedAvgM(s, _lr(c, 1.0), c.momentum)),
    Entry(
        cfgs.FedProxConfig,
        lambda c, s, n: FedProx(s, _lr(c, 1.0)),
        lambda cfg: [ProximalTerm(getattr(cfg.strategy, "proximal_mu", 0.0))],
    ),
    Entry(cfgs.FedAdamConfig, _fedopt(FedAdam)),
    Entry(cfgs.FedYogiConfig, _fedopt(FedYogi)),
    Entry(cfgs.FedAdagradConfig, lambda c, s, n: FedAdagrad(s, _lr(c, 1e-2), tau=c.tau)),
    Entry(
        cfgs.ScaffoldConfig,
        lambda c, s, n: Scaffold(s, n, _lr(c, 1.0)),
        lambda cfg: [ControlVariates(sgd=cfg.client.optimizer == "sgd")],
    ),
    Entry(cfgs.MedianConfig, lambda c, s, n: Median(s, _lr(c, 1.0))),
    Entry(cfgs.TrimmedMeanConfig, lambda c, s, n: TrimmedMean(s, c.trim_beta, _lr(c, 1.0))),
    Entry(cfgs.KrumConfig, _krum(multi=False)),
    Entry(cfgs.MultiKrumConfig, _krum(multi=True)),
    Entry(
        cfgs.NormBoundConfig, lambda c, s, n: NormBound(FedAvg(s, _lr(c, 1.0)), c.norm_bound or 1.0)
    ),
    Entry(cfgs.ExactConfig, lambda c, s, n: ExactLoRA(s)),
    Entry(cfgs.FFALoRAConfig, lambda c, s, n: FFALoRA(s, _lr(c, 1.0)), lambda cfg: [FreezeA()]),
    Entry(
        cfgs.HetLoRAConfig,
        lambda c, s, n: HetLoRA(s, client_ranks(c, n, 8)),
        lambda cfg: [RankAdapter()],
    ),
    Entry(
        cfgs.FlexLoRAConfig,
        lambda c, s, n: FlexLoRA(s, client_ranks(c, n, 8)),
        lambda cfg: [RankAdapter()],
    ),
    Entry(cfgs.FedDFConfig, lambda c, s, n: FedDF(s, _lr(c, 1.0))),
)
STRATEGIES: dict[str, Entry] = {e.name: e for e in _ENTRIES}


def _entry(name: str) -> Entry:
    if name not in STRATEGIES:
        raise ConfigError(f"strategy.name: {name!r} is not one of {', '.join(STRATEGIES)}")
    return STRATEGIES[name]


def build_strategy(
    cfg: StrategyConfigBase, num_clients: int, *, poisson: bool = False, uniform: bool = False
) -> Strategy:
    """Build the configured strategy (server half) with its client sampler.

    `strategy.norm_bound` wraps any strategy in a server-side norm bound; `poisson` samples
    clients independently (`privacy.sampling`); `uniform` weighs every client the same
    (`privacy.weighting`).

    Raises:
        ConfigError: unknown name (listing the valid ones) or invalid parameters, including
            settings that could never aggregate (Krum with n ≤ 2f + 2, Multi-Krum with m > n).
    """
    name = type(cfg).model_fields["name"].default
    entry = _entry(name)
    sampler = ClientSampler(cfg.clients_per_round, cfg.fraction, cfg.min_clients, poisson)
    try:
        strategy = entry.build(cfg, sampler, num_clients)
        if cfg.norm_bound is not None and name != "norm-bound":
            strategy = NormBound(strategy, cfg.norm_bound)
        if uniform:
            strategy = UniformWeights(strategy)
    except ValueError as exc:
        raise ConfigError(f"strategy: {exc}") from exc
    return strategy


def build_hooks(cfg: Config) -> list[ClientHook]:
    """The client hooks of the configured strategy (the same on every machine)."""
    return _entry(type(cfg.strategy).model_fields["name"].default).hooks(cfg)


if set(STRATEGIES) != set(STRATEGY_CONFIGS):  # pragma: no cover - a registry typo
    raise RuntimeError(
        f"strategy entries {sorted(STRATEGIES)} != configs {sorted(STRATEGY_CONFIGS)}"
    )
