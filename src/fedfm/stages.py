"""Pipeline stage names -> config class and factory (one entry per stage), and the checks of
a pipeline's order and combinations that run when the config is loaded.

Each stage owns its settings (`[[pipeline.uplink]] name = "topk"`, `fraction = 0.1`); the
config's stage union is generated from `STAGES`, and implementations are imported only when
a pipeline is built (loading a config imports no torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field, field_validator

from fedfm.configbase import Role, StageConfigBase, StageKind, by_name, tagged_union
from fedfm.privacy.configs import PRIVATE_STAGES

if TYPE_CHECKING:
    from fedfm.config import Config
    from fedfm.pipeline import Stage

MIN_BLOCK_SIZE = 8  # a 4-byte scale per fewer values costs more than it saves


class ClipConfig(StageConfigBase):
    """`clip`: scale each update to an L2 norm of at most `clip_norm`."""

    name: Literal["clip"] = "clip"
    kind: ClassVar[StageKind] = StageKind.CLIP
    clip_norm: float = Field(1.0, gt=0)

    def build(self) -> Stage:
        """The stage."""
        from fedfm.privacy.clip import ClipNorm

        return ClipNorm(self.clip_norm)


class Fp16Config(StageConfigBase):
    """`fp16`: float16 on the wire (saturating)."""

    name: Literal["fp16"] = "fp16"
    role: ClassVar[Role] = "quantiser"

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.precision import Float16

        return Float16()


class Bf16Config(StageConfigBase):
    """`bf16`: bfloat16 on the wire."""

    name: Literal["bf16"] = "bf16"
    role: ClassVar[Role] = "quantiser"

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.precision import BFloat16

        return BFloat16()


class _QuantiseConfig(StageConfigBase):
    role: ClassVar[Role] = "quantiser"
    bits: ClassVar[int] = 8
    block_size: int | None = None  # None or 0: one scale per tensor

    @field_validator("block_size")
    @classmethod
    def _block_size(cls, value: int | None) -> int | None:
        if value is not None and value != 0 and value < MIN_BLOCK_SIZE:
            raise ValueError(f"0 or null (one scale per tensor) or an integer >= {MIN_BLOCK_SIZE}")
        return value or None

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.quantize import Quantise

        return Quantise(self.bits, self.block_size)


class Int8Config(_QuantiseConfig):
    """`int8`: 8-bit integers, unbiased stochastic rounding, per-tensor or per-block scales."""

    name: Literal["int8"] = "int8"


class Int4Config(_QuantiseConfig):
    """`int4`: 4-bit integers packed two per byte, stochastic rounding, scales as int8."""

    name: Literal["int4"] = "int4"
    bits: ClassVar[int] = 4


class TopKConfig(StageConfigBase):
    """`topk`: send the `fraction` largest-magnitude entries of each tensor; the client keeps
    what it did not send (error feedback) and adds it to its next update."""

    name: Literal["topk"] = "topk"
    role: ClassVar[Role] = "sparsifier"
    fraction: float = Field(0.1, gt=0, le=1)
    error_feedback: bool = True

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.sparsify import TopK

        return TopK(self.fraction, self.error_feedback)


class RandKConfig(StageConfigBase):
    """`randk`: send a seeded random `fraction` of each tensor's entries; `unbiased` scales
    them by n/k so the decoded update is unbiased."""

    name: Literal["randk"] = "randk"
    role: ClassVar[Role] = "sparsifier"
    fraction: float = Field(0.1, gt=0, le=1)
    unbiased: bool = True
    error_feedback: bool = False

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.sparsify import RandK

        return RandK(self.fraction, self.error_feedback, self.unbiased)


class SecAggConfig(StageConfigBase):
    """`secagg`: secure aggregation (SecAgg+); the server sees only the sum of the masked,
    fixed-point encoded updates. Entries are clipped to [-clip_range, clip_range]; with
    `weighting = "examples"` a client scales its update by num_examples / max_num_examples
    before masking (FedAvg's weights), with `"uniform"` every client weighs the same."""

    name: Literal["secagg"] = "secagg"
    kind: ClassVar[StageKind] = StageKind.MASK
    clip_range: float = Field(gt=0, allow_inf_nan=False)
    bits: int = Field(32, ge=2, le=64)
    degree: int | None = Field(None, ge=2)  # None: the complete graph (SecAgg)
    min_fraction: float = Field(0.5, gt=0, le=1)  # share of a secret's holders needed
    levels: int | None = Field(None, ge=2)  # None: the finest the cohort allows
    weighting: Literal["examples", "uniform"] = "examples"
    max_num_examples: int = Field(10_000, ge=1)  # the weight that scales an update by 1

    @field_validator("degree")
    @classmethod
    def _even_degree(cls, value: int | None) -> int | None:
        if value is not None and value % 2:
            raise ValueError("an even integer >= 2 or null (the complete graph)")
        return value

    def build(self) -> Stage:
        """The stage."""
        from fedfm.privacy.secagg.stage import SecAggStage

        return SecAggStage(
            self.clip_range,
            self.bits,
            self.degree,
            self.min_fraction,
            self.levels,
            weighting=self.weighting,
            max_num_examples=self.max_num_examples,
        )


STAGES: dict[str, type[StageConfigBase]] = by_name(
    [
        ClipConfig,
        Fp16Config,
        Bf16Config,
        Int8Config,
        Int4Config,
        TopKConfig,
        RandKConfig,
        SecAggConfig,
        *PRIVATE_STAGES,
    ]
)

if TYPE_CHECKING:
    StageField = StageConfigBase
else:  # pydantic: chosen by `name`, which every stage entry must give
    StageField = tagged_union(STAGES)


def build_stages(configs: Sequence[StageConfigBase]) -> list[Stage]:
    """The stages of a pipeline, in config order."""
    return [c.build() for c in configs]


def _name(cfg: StageConfigBase) -> str:
    return str(type(cfg).model_fields["name"].default)


def _names(role: Role) -> str:
    return ", ".join(name for name, cls in STAGES.items() if cls.role == role)


def check_pipeline(configs: Sequence[StageConfigBase], where: str) -> None:
    """Refuse invalid orders and combinations, with one line naming the entry.

    Refused: kinds that decrease (poison < clip < noise < compress < mask: e.g. sparsifying
    after secure-aggregation masking), two quantisers, two sparsifiers, a sparsifier after a
    quantiser, error feedback on the downlink (the server keeps no client state), and error
    feedback with unbiased random-k (scaled random-k is not contractive: residuals grow).

    Args:
        configs: the stage entries in order.
        where: `pipeline.uplink` or `pipeline.downlink`.

    Raises:
        ValueError: naming the entry and the allowed values.
    """
    seen: dict[str, tuple[int, str]] = {}  # role -> first (index, name)
    for i, cfg in enumerate(configs):
        name, at = _name(cfg), f"{where}.{i}"
        if i and cfg.kind < configs[i - 1].kind:
            prev = configs[i - 1]
            order = " < ".join(k.name.lower() for k in StageKind)
            raise ValueError(
                f"{at}: {name!r} ({cfg.kind.name.lower()}) cannot come after "
                f"{_name(prev)!r} ({prev.kind.name.lower()}); "
                f"valid order: {order}"
            )
        if cfg.role is not None and cfg.role in seen:
            first = seen[cfg.role][1]
            raise ValueError(
                f"{at}: a second {cfg.role} {name!r} after {first!r}; use at most one of "
                f"{_names(cfg.role)}"
            )
        if cfg.role == "sparsifier" and "quantiser" in seen:
            raise ValueError(
                f"{at}: {name!r} cannot come after the quantiser {seen['quantiser'][1]!r}; "
                f"put {_names('sparsifier')} before {_names('quantiser')}"
            )
        if cfg.role is not None:
            seen[cfg.role] = (i, name)
        feedback = getattr(cfg, "error_feedback", False)
        if feedback and where.endswith("downlink"):
            raise ValueError(
                f"{at}.error_feedback: must be false on {where} (the server keeps no client "
                "state store for residuals); allowed: false"
            )
        if feedback and getattr(cfg, "unbiased", False):
            raise ValueError(
                f"{at}: unbiased = true and error_feedback = true cannot be combined (scaled "
                "random-k is not contractive); set one of them to false"
            )


def check_secure_aggregation(cfg: Config) -> None:
    """Refuse what a `secagg` stage cannot run with, one line naming the key.

    Refused: `secagg` on the downlink, twice, or outside federated mode; a compression stage
    on the same uplink (masks make sparse or quantised payloads dense, and the server cannot
    undo a stage on a masked sum: `secagg` quantises to fixed point itself); a strategy whose
    reduction is not `"sum"` (median, Krum, trimmed mean, LoRA-exact... need individual
    updates; `strategy.norm_bound` too); a strategy with reply extras (SCAFFOLD: extras are
    not masked); and a cohort whose fixed-point sum could overflow,
    n * (levels - 1) >= 2^bits with n the largest cohort.

    Raises:
        ValueError: naming the entry and the allowed values.
    """
    for i, c in enumerate(cfg.pipeline.downlink):
        if isinstance(c, SecAggConfig):
            raise ValueError(f"pipeline.downlink.{i}: 'secagg' belongs in pipeline.uplink only")
    uplink = list(cfg.pipeline.uplink)
    found = [i for i, c in enumerate(uplink) if isinstance(c, SecAggConfig)]
    if not found:
        return
    at = f"pipeline.uplink.{found[0]}"
    if len(found) > 1:
        raise ValueError(f"pipeline.uplink.{found[1]}: at most one 'secagg' stage")
    if cfg.mode != "federated":
        raise ValueError(f"{at}: 'secagg' needs mode='federated', got {cfg.mode!r}")
    for i, c in enumerate(uplink):
        if c.kind == StageKind.COMPRESS:
            raise ValueError(
                f"pipeline.uplink.{i}: {_name(c)!r} cannot be combined with 'secagg' (masks "
                "make sparse or quantised payloads dense; secagg quantises itself); remove it"
            )
    strategy = _strategy_name(cfg)
    if cfg.strategy.norm_bound is not None:
        raise ValueError(
            f"{at}: 'secagg' needs a strategy whose reduction is 'sum'; strategy.norm_bound "
            "needs individual updates (use a 'clip' stage); allowed: null"
        )
    from fedfm.strategies.registry import build_strategy

    built = build_strategy(cfg.strategy, cfg.partition.num_clients)
    if built.reduction != "sum":
        raise ValueError(
            f"strategy.name={strategy!r} needs individual updates, which 'secagg' hides; use "
            "a strategy whose reduction is 'sum' (fedavg, fedavgm, fedprox, fedadam, ...)"
        )
    if built.reply_extras:
        raise ValueError(
            f"strategy.name={strategy!r} sends extras {sorted(built.reply_extras)}, which "
            "'secagg' does not mask; use a strategy without extras"
        )
    _check_capacity(uplink[found[0]], _largest_cohort(cfg), at)  # type: ignore[arg-type]


def _check_capacity(c: SecAggConfig, n: int, at: str) -> None:
    """n * (levels - 1) < 2^bits for the largest cohort n, else one line naming the key."""
    most = (2**c.bits - 1) // n + 1  # the most levels n clients can sum without overflow
    if c.levels is not None and n * (c.levels - 1) >= 2**c.bits:
        raise ValueError(
            f"{at}.levels: {n} clients * (levels - 1) = {n * (c.levels - 1)} overflows "
            f"2^bits = 2^{c.bits}; use levels <= {most}, more bits, or null"
        )
    if c.levels is None and most < 2:
        raise ValueError(f"{at}.bits: {c.bits} bits cannot sum {n} clients; use more bits")


def _largest_cohort(cfg: Config) -> int:
    """The most clients a round can sample (the sampler's count, capped by the clients)."""
    s, num_clients = cfg.strategy, cfg.partition.num_clients
    n = s.clients_per_round if s.clients_per_round is not None else 0
    if s.clients_per_round is None and s.fraction is not None:
        n = math.ceil(s.fraction * num_clients)
    return min(max(n, s.min_clients), num_clients)


def _strategy_name(cfg: Config) -> str:
    return str(type(cfg.strategy).model_fields["name"].default)
