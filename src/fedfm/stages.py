"""Pipeline stage names -> config class and factory (one entry per stage).

Each stage owns its settings (`[[pipeline.uplink]] name = "clip"`, `clip_norm = 1.0`); the
config's stage union is generated from `STAGES`, and implementations are imported only when
a pipeline is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedfm.configbase import Section, by_name, tagged_union

if TYPE_CHECKING:
    from fedfm.pipeline import Stage


class StageConfigBase(Section):
    """A stage's settings; `build` makes the stage."""

    def build(self) -> Stage:
        """The stage."""
        raise NotImplementedError


class ClipConfig(StageConfigBase):
    """`clip`: scale each update to an L2 norm of at most `clip_norm`."""

    name: Literal["clip"] = "clip"
    clip_norm: float = Field(1.0, gt=0)

    def build(self) -> Stage:
        """The stage."""
        from fedfm.privacy.clip import ClipNorm

        return ClipNorm(self.clip_norm)


class Fp16Config(StageConfigBase):
    """`fp16`: float16 on the wire (saturating)."""

    name: Literal["fp16"] = "fp16"

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.precision import Float16

        return Float16()


class Bf16Config(StageConfigBase):
    """`bf16`: bfloat16 on the wire."""

    name: Literal["bf16"] = "bf16"

    def build(self) -> Stage:
        """The stage."""
        from fedfm.compression.precision import BFloat16

        return BFloat16()


STAGES: dict[str, type[StageConfigBase]] = by_name([ClipConfig, Fp16Config, Bf16Config])

if TYPE_CHECKING:
    StageField = StageConfigBase
else:  # pydantic: chosen by `name`, which every stage entry must give
    StageField = tagged_union(STAGES)


def build_stages(configs: Sequence[StageConfigBase]) -> list[Stage]:
    """The stages of a pipeline, in config order."""
    return [c.build() for c in configs]
