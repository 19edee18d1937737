"""Privacy settings: the `[privacy]` section, the `noise` and `adaptive-clip` stage entries,
how they are built for a run, and the checks that refuse unsafe combinations at load time.

```toml
[privacy]
accountant = "rdp"        # or "pld"
delta = 1e-5
target_epsilon = 8.0      # calibrates noise.noise_multiplier if unset, else stops the run
sampling = "fixed"        # or "poisson": how clients are sampled, and accounted
weighting = "uniform"     # clients weigh the same (required by the noise stage)

[[pipeline.uplink]]
name = "clip"             # or "adaptive-clip"
clip_norm = 0.5

[[pipeline.uplink]]
name = "noise"
mode = "central"          # or "distributed" (with secure aggregation)
```

Privacy stages need more than their own entry (the cohort size, the rounds, δ, the seed), so
the uplink is built by `build_uplink` with the run's config; `privacy_hooks` gives the DP-SGD
client hook of `[privacy.dpsgd]`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field

from fedfm.configbase import Section, StageConfigBase, StageKind
from fedfm.errors import ConfigError

if TYPE_CHECKING:
    from fedfm.client.hooks import ClientHook
    from fedfm.config import Config
    from fedfm.pipeline import Stage
    from fedfm.privacy.accountant import Accountant


class DPSGDConfig(Section):
    """`[privacy.dpsgd]`: record-level DP-SGD inside every client (Opacus)."""

    noise_multiplier: float = Field(1.0, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    grad_sample_mode: Literal["hooks", "functorch"] = "hooks"


class PrivacyConfig(Section):
    """`[privacy]`: accounting, budget, client sampling and weighting, noise source."""

    accountant: Literal["rdp", "pld"] = "rdp"
    delta: float = Field(1e-5, gt=0, lt=1)
    target_epsilon: float | None = Field(None, gt=0)
    sampling: Literal["fixed", "poisson"] = "fixed"
    weighting: Literal["examples", "uniform"] = "examples"
    secure_noise: bool | None = None  # None: seeded in simulation, cryptographic otherwise
    dpsgd: DPSGDConfig | None = None


@dataclass(frozen=True)
class PrivacyPlan:
    """What the privacy stages need to know about the run.

    Attributes:
        privacy: the `[privacy]` section.
        rounds: the rounds planned.
        num_clients: N, the clients sampled from.
        expected_clients: n, the (expected) cohort size.
        seed: the run's seed.
        secure: cryptographic noise instead of seeded noise.
        streams: clipped vectors per client (the update and the strategy's extras).
    """

    privacy: PrivacyConfig
    rounds: int
    num_clients: int
    expected_clients: int
    seed: int
    secure: bool
    streams: int

    @property
    def sample_rate(self) -> float:
        """q = n / N."""
        return self.expected_clients / self.num_clients

    @classmethod
    def of(cls, cfg: Config, privacy: PrivacyConfig, num_clients: int) -> PrivacyPlan:
        """The plan of a run with `num_clients` clients."""
        return cls(
            privacy=privacy,
            rounds=cfg.rounds,
            num_clients=num_clients,
            expected_clients=_expected_clients(cfg, num_clients),
            seed=cfg.seed,
            secure=_secure(cfg, privacy),
            streams=1 + len(_strategy(cfg, num_clients).reply_extras),
        )

    def accountant(self) -> Accountant:
        """A fresh accountant for this plan."""
        from fedfm.privacy.accountant import Accountant

        return Accountant(self.privacy.accountant, self.privacy.sampling, self.num_clients)


class _PrivateStageConfig(StageConfigBase):
    def build(self) -> Stage:
        """Refused: a privacy stage is built with the run's plan (`build_uplink`)."""
        raise ConfigError(
            f"pipeline: {_name(self)!r} is built by fedfm.privacy.configs.build_uplink "
            "(it needs the run's cohort size, rounds and privacy section)"
        )

    def build_private(self, plan: PrivacyPlan, previous: Sequence[Stage]) -> Stage:
        """The stage, for `plan`, after the `previous` stages of the uplink."""
        raise NotImplementedError


class AdaptiveClipConfig(_PrivateStageConfig):
    """`adaptive-clip`: clip to a bound that tracks the `target_quantile` of update norms."""

    name: Literal["adaptive-clip"] = "adaptive-clip"
    kind: ClassVar[StageKind] = StageKind.CLIP
    clip_norm: float = Field(0.1, gt=0)  # the initial bound
    target_quantile: float = Field(0.5, gt=0, lt=1)
    learning_rate: float = Field(0.2, gt=0)
    count_noise_multiplier: float | None = Field(None, gt=0)  # None: expected clients / 20

    def count_noise(self, expected_clients: int) -> float:
        """σ_b: the configured one, or n/20 (Andrew et al.'s suggestion)."""
        return self.count_noise_multiplier or expected_clients / 20

    def build_private(self, plan: PrivacyPlan, previous: Sequence[Stage]) -> Stage:
        """The stage."""
        from fedfm.privacy.adaptive import AdaptiveClipNorm

        del previous
        return AdaptiveClipNorm(
            self.clip_norm,
            target_quantile=self.target_quantile,
            learning_rate=self.learning_rate,
            count_noise_multiplier=self.count_noise(plan.expected_clients),
            expected_clients=plan.expected_clients,
            secure=plan.secure,
            seed=plan.seed,
        )


class NoiseConfig(_PrivateStageConfig):
    """`noise`: Gaussian noise of DP-FedAvg, added by the server or split across clients."""

    name: Literal["noise"] = "noise"
    kind: ClassVar[StageKind] = StageKind.NOISE
    mode: Literal["central", "distributed"] = "central"
    noise_multiplier: float | None = Field(None, gt=0)  # None: from privacy.target_epsilon

    def build_private(self, plan: PrivacyPlan, previous: Sequence[Stage]) -> Stage:
        """The stage, reading the bound of the last clip stage before it.

        Raises:
            ConfigError: no clip stage before it, or no noise multiplier and no target.
        """
        from fedfm.privacy.accountant import calibrate_noise
        from fedfm.privacy.adaptive import AdaptiveClipNorm
        from fedfm.privacy.noise import GaussianNoise

        clips = [s for s in previous if s.kind == StageKind.CLIP]
        if not clips:
            raise ConfigError(
                "pipeline.uplink: 'noise' needs a 'clip' or 'adaptive-clip' before it"
            )
        clip = clips[-1]
        count = clip.count_noise_multiplier if isinstance(clip, AdaptiveClipNorm) else None
        p = plan.privacy
        z = self.noise_multiplier
        if z is None:
            if p.target_epsilon is None:
                raise ConfigError(
                    "pipeline.uplink 'noise': set noise_multiplier or privacy.target_epsilon"
                )
            z = calibrate_noise(
                p.target_epsilon,
                p.delta,
                plan.sample_rate,
                plan.rounds,
                accountant=p.accountant,
                sampling=p.sampling,
                population=plan.num_clients,
            )
        return GaussianNoise(
            clip,  # type: ignore[arg-type]  # every CLIP stage has `clip_norm`
            noise_multiplier=z,
            mode=self.mode,
            expected_clients=plan.expected_clients,
            accountant=plan.accountant(),
            sample_rate=plan.sample_rate,
            delta=p.delta,
            target_epsilon=p.target_epsilon,
            streams=plan.streams,
            count_noise_multiplier=count,
            secure=plan.secure,
            seed=plan.seed,
        )


PRIVATE_STAGES: list[type[StageConfigBase]] = [AdaptiveClipConfig, NoiseConfig]


def build_uplink(
    configs: Sequence[StageConfigBase], cfg: Config, privacy: PrivacyConfig, num_clients: int
) -> list[Stage]:
    """The uplink's stages in config order; privacy stages get the run's plan."""
    stages: list[Stage] = []
    plan: PrivacyPlan | None = None
    for c in configs:
        if isinstance(c, _PrivateStageConfig):
            plan = plan or PrivacyPlan.of(cfg, privacy, num_clients)
            stages.append(c.build_private(plan, stages))
        else:
            stages.append(c.build())
    return stages


def privacy_hooks(cfg: Config, privacy: PrivacyConfig) -> list[ClientHook]:
    """The DP-SGD client hook of `[privacy.dpsgd]` (none without it); put it after the
    strategy's hooks, so that it sees which parameters they froze."""
    if privacy.dpsgd is None:
        return []
    from fedfm.privacy.dpsgd import DPSGD

    d = privacy.dpsgd
    secure = _secure(cfg, privacy)
    return [
        DPSGD(
            d.noise_multiplier, d.max_grad_norm, privacy.delta, d.grad_sample_mode, secure, cfg.seed
        )
    ]


def check_privacy(cfg: Config, privacy: PrivacyConfig) -> None:
    """Refuse unsafe or meaningless privacy set-ups, one line naming the keys.

    Raises:
        ConfigError: privacy stages on the downlink; noise without a clip before it, twice, or
            without a multiplier or target; noise with example weights or a strategy that
            does not reduce to a mean; adaptive clipping with distributed noise, secure
            aggregation or a strategy's extras; a target without noise; PLD with fixed-size
            sampling; adaptive clipping's count noise too small for the noise multiplier;
            DP-SGD with prompt tuning.
    """
    for c in cfg.pipeline.downlink:
        if isinstance(c, _PrivateStageConfig):
            raise ConfigError(f"pipeline.downlink: {_name(c)!r} belongs in pipeline.uplink")
    uplink = list(cfg.pipeline.uplink)
    names = [_name(c) for c in uplink]
    noises = [c for c in uplink if isinstance(c, NoiseConfig)]
    adaptive = next((c for c in uplink if isinstance(c, AdaptiveClipConfig)), None)
    if privacy.accountant == "pld" and privacy.sampling == "fixed":
        raise ConfigError(
            "privacy.accountant='pld' needs privacy.sampling='poisson' (no PLD of fixed-size "
            "sampling); allowed with 'fixed': 'rdp'"
        )
    if privacy.dpsgd is not None and cfg.adapter.method == "prompt":
        raise ConfigError(
            "privacy.dpsgd does not support adapter.method='prompt' (peft computes the prompt "
            "once per batch: no per-example gradient); allowed: lora, head, full"
        )
    if privacy.target_epsilon is not None and not noises:
        raise ConfigError("privacy.target_epsilon needs a 'noise' stage in pipeline.uplink")
    if len(noises) > 1:
        raise ConfigError("pipeline.uplink: at most one 'noise' stage")
    if noises:
        noise, at = noises[0], names.index("noise")
        if not any(c.kind == StageKind.CLIP for c in uplink[:at]):
            raise ConfigError(
                "pipeline.uplink: 'noise' needs a 'clip' or 'adaptive-clip' before it"
            )
        if noise.noise_multiplier is None and privacy.target_epsilon is None:
            raise ConfigError(
                "pipeline.uplink 'noise': set noise_multiplier or privacy.target_epsilon"
            )
        if privacy.weighting != "uniform":
            raise ConfigError(
                "pipeline.uplink 'noise' needs privacy.weighting='uniform' (DP-FedAvg bounds "
                f"each client's weight), got {privacy.weighting!r}"
            )
        _check_reduction(cfg, "noise")
    if adaptive is not None:
        if any(n.mode == "distributed" for n in noises) or any(
            c.kind == StageKind.MASK for c in uplink
        ):
            raise ConfigError(
                "pipeline.uplink 'adaptive-clip' works with central noise only (its count "
                "is read per client); use 'clip' with mode='distributed' or secure aggregation"
            )
        if _strategy(cfg, cfg.partition.num_clients).reply_extras:
            raise ConfigError(
                f"pipeline.uplink 'adaptive-clip' does not cover the extras of strategy.name="
                f"{_strategy_name(cfg)!r}; use 'clip' (every stream clipped and noised)"
            )
        z = noises[0].noise_multiplier if noises else None
        if z is not None:
            count = adaptive.count_noise(_expected_clients(cfg, cfg.partition.num_clients))
            if count <= z / 2:
                raise ConfigError(
                    f"pipeline.uplink 'adaptive-clip': count_noise_multiplier ({count:.4g}) must "
                    f"be > noise_multiplier / 2 = {z / 2:.4g} (Andrew et al. 2021, Theorem 1)"
                )


def _check_reduction(cfg: Config, stage: str) -> None:
    if cfg.strategy.norm_bound is not None:
        raise ConfigError(
            f"pipeline.uplink {stage!r} needs a strategy whose reduction is 'sum'; "
            "strategy.norm_bound makes the server see individual updates (use a 'clip' stage)"
        )
    if _strategy(cfg, cfg.partition.num_clients).reduction != "sum":
        raise ConfigError(
            f"pipeline.uplink {stage!r} needs a strategy whose reduction is 'sum'; "
            f"strategy.name={_strategy_name(cfg)!r} needs individual updates"
        )


def _expected_clients(cfg: Config, num_clients: int) -> int:
    from fedfm.strategies.base import ClientSampler

    s = cfg.strategy
    return ClientSampler(s.clients_per_round, s.fraction, s.min_clients).num_to_sample(num_clients)


def _secure(cfg: Config, privacy: PrivacyConfig) -> bool:
    """`privacy.secure_noise`, or by default: seeded in simulation, cryptographic otherwise."""
    if privacy.secure_noise is not None:
        return privacy.secure_noise
    return cfg.backend.name != "inprocess"


def _strategy(cfg: Config, num_clients: int) -> Any:
    from fedfm.strategies.registry import build_strategy

    return build_strategy(cfg.strategy, max(num_clients, 1))


def _strategy_name(cfg: Config) -> str:
    return str(type(cfg.strategy).model_fields["name"].default)


def _name(cfg: StageConfigBase) -> str:
    return str(type(cfg).model_fields["name"].default)
