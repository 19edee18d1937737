"""Strategy config sections (`[strategy] name = ...`), one class per strategy; pydantic only.

Every strategy shares the sampling and robustness settings of `StrategyConfigBase` and owns
its own parameters and cross-section checks (`check`). The config's strategy union is built
from `STRATEGY_CONFIGS`; `fedfm.strategies.registry` maps each name to its two halves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from fedfm.configbase import Section, by_name, tagged_union

if TYPE_CHECKING:
    from fedfm.config import Config


class StrategyConfigBase(Section):
    """Who trains each round, and what the server accepts from them."""

    fraction: float | None = Field(None, gt=0, le=1)
    clients_per_round: int | None = Field(10, ge=1)
    min_clients: int = Field(1, ge=1)
    min_success_fraction: float = Field(0.5, ge=0, le=1)
    max_num_examples: int = Field(10**8, ge=1)  # the largest FedAvg weight a client may claim
    server_lr: float | None = Field(None, gt=0)  # None: the strategy's own default
    norm_bound: float | None = Field(None, gt=0)  # clip every update on the server first

    @model_validator(mode="after")
    def _one_sampling_rule(self) -> StrategyConfigBase:
        if self.fraction is None and self.clients_per_round is None:
            raise ValueError("set strategy.fraction or strategy.clients_per_round")
        return self

    def check(self, cfg: Config) -> None:
        """Cross-section checks (raise ValueError naming the keys); none by default."""
        del cfg


class _NeedsLoRA(StrategyConfigBase):
    def check(self, cfg: Config) -> None:
        """The strategy works on LoRA factors."""
        if cfg.adapter.method != "lora":
            name = type(self).model_fields["name"].default
            raise ValueError(f"strategy.name={name!r} needs adapter.method='lora'")


class FedAvgConfig(StrategyConfigBase):
    """`fedavg`: example-weighted mean of the updates."""

    name: Literal["fedavg"] = "fedavg"


class FedAvgMConfig(StrategyConfigBase):
    """`fedavgm`: FedAvg with server momentum."""

    name: Literal["fedavgm"] = "fedavgm"
    momentum: float = Field(0.9, ge=0, lt=1)


class FedProxConfig(StrategyConfigBase):
    """`fedprox`: FedAvg whose clients add (mu/2)||w - w_global||²."""

    name: Literal["fedprox"] = "fedprox"
    proximal_mu: float = Field(0.01, ge=0)


class _FedOptConfig(StrategyConfigBase):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


class FedAdamConfig(_FedOptConfig):
    """`fedadam`: adaptive server optimiser (Adam)."""

    name: Literal["fedadam"] = "fedadam"


class FedYogiConfig(_FedOptConfig):
    """`fedyogi`: adaptive server optimiser (Yogi)."""

    name: Literal["fedyogi"] = "fedyogi"


class FedAdagradConfig(StrategyConfigBase):
    """`fedadagrad`: adaptive server optimiser (Adagrad, beta1 = 0)."""

    name: Literal["fedadagrad"] = "fedadagrad"
    tau: float = Field(1e-3, gt=0)


class ScaffoldConfig(StrategyConfigBase):
    """`scaffold`: control variates (kept per client, checkpointed)."""

    name: Literal["scaffold"] = "scaffold"


class MedianConfig(StrategyConfigBase):
    """`median`: coordinate-wise median."""

    name: Literal["median"] = "median"


class TrimmedMeanConfig(StrategyConfigBase):
    """`trimmed-mean`: coordinate-wise trimmed mean."""

    name: Literal["trimmed-mean"] = "trimmed-mean"
    trim_beta: float = Field(0.1, ge=0, lt=0.5)


class KrumConfig(StrategyConfigBase):
    """`krum`: the update with the lowest Krum score (needs n > 2f + 2 per round)."""

    name: Literal["krum"] = "krum"
    num_byzantine: int = Field(1, ge=0)


class MultiKrumConfig(StrategyConfigBase):
    """`multi-krum`: the mean of the m best-scored updates (m = n - f by default)."""

    name: Literal["multi-krum"] = "multi-krum"
    num_byzantine: int = Field(1, ge=0)
    num_selected: int | None = Field(None, ge=1)


class NormBoundConfig(StrategyConfigBase):
    """`norm-bound`: FedAvg of updates clipped to `norm_bound` (default 1.0)."""

    name: Literal["norm-bound"] = "norm-bound"


class ExactConfig(_NeedsLoRA):
    """`exact`: mean of B·A, re-factorised by SVD."""

    name: Literal["exact"] = "exact"


class FFALoRAConfig(_NeedsLoRA):
    """`ffa-lora`: A frozen, only B trains and travels."""

    name: Literal["ffa-lora"] = "ffa-lora"


class _RankedConfig(_NeedsLoRA):
    lora_ranks: list[int] | None = Field(None, min_length=1)

    def check(self, cfg: Config) -> None:
        """LoRA, and no client rank above the model's."""
        super().check(cfg)
        ranks = self.lora_ranks or []
        if any(r < 1 for r in ranks):
            raise ValueError(f"strategy.lora_ranks must be positive, got {ranks}")
        if ranks and max(ranks) > cfg.adapter.r:
            raise ValueError(
                f"strategy.lora_ranks: max {max(ranks)} exceeds adapter.r={cfg.adapter.r}"
            )


class HetLoRAConfig(_RankedConfig):
    """`hetlora`: per-client ranks by zero-padding and truncation."""

    name: Literal["hetlora"] = "hetlora"


class FlexLoRAConfig(_RankedConfig):
    """`flexlora`: per-client ranks by SVD of the mean full product."""

    name: Literal["flexlora"] = "flexlora"


class FedDFConfig(StrategyConfigBase):
    """`feddf`: FedAvg, then the server distils the clients' ensemble into the global model.

    The unlabelled server set is `server_examples` examples reserved from the training pool
    (no client and no test split holds them; their labels are never read).
    """

    name: Literal["feddf"] = "feddf"
    server_examples: int = Field(200, ge=1)
    server_steps: int = Field(20, ge=1)
    temperature: float = Field(1.0, gt=0)
    distill_lr: float = Field(1e-3, gt=0)
    distill_batch_size: int = Field(32, ge=1)

    def check(self, cfg: Config) -> None:
        """The task must give class logits (the ensemble averages them)."""
        if cfg.task.name not in ("text_classification", "digits", "image_classification"):
            raise ValueError(
                f"strategy.name='feddf' needs a classification task (task.name "
                f"text_classification, digits or image_classification), got {cfg.task.name!r}"
            )


STRATEGY_CONFIGS: dict[str, type[StrategyConfigBase]] = by_name(
    [
        FedAvgConfig,
        FedAvgMConfig,
        FedProxConfig,
        FedAdamConfig,
        FedYogiConfig,
        FedAdagradConfig,
        ScaffoldConfig,
        MedianConfig,
        TrimmedMeanConfig,
        KrumConfig,
        MultiKrumConfig,
        NormBoundConfig,
        ExactConfig,
        FFALoRAConfig,
        HetLoRAConfig,
        FlexLoRAConfig,
        FedDFConfig,
    ]
)
DEFAULT_STRATEGY = "fedavg"


if TYPE_CHECKING:  # type checkers see the base; builders receive their own class
    StrategyField = StrategyConfigBase
else:  # pydantic: chosen by `name`, a `[strategy]` section without one is FedAvg
    StrategyField = tagged_union(STRATEGY_CONFIGS, DEFAULT_STRATEGY)
