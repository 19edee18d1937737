"""Invalid compression orders and settings are refused when the config is loaded, with one
line naming the entry and the allowed values."""

from typing import ClassVar, Literal

import pytest

from fedfm.compression.sparsify import TopK
from fedfm.config import load_config
from fedfm.errors import ConfigError
from fedfm.pipeline import Pipeline, StageBase, StageKind
from fedfm.stages import StageConfigBase, TopKConfig, check_pipeline


def _load(*overrides):
    return load_config(None, list(overrides))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            'pipeline.uplink=[{name="int8"}, {name="fp16"}]',
            "pipeline.uplink.1: a second quantiser 'fp16' after 'int8'; use at most one of "
            "fp16, bf16, int8, int4",
        ),
        (
            'pipeline.downlink=[{name="bf16"}, {name="int4"}]',
            "pipeline.downlink.1: a second quantiser 'int4' after 'bf16'",
        ),
        (
            'pipeline.uplink=[{name="int8"}, {name="topk"}]',
            "pipeline.uplink.1: 'topk' cannot come after the quantiser 'int8'; put topk, randk "
            "before fp16, bf16, int8, int4",
        ),
        (
            'pipeline.uplink=[{name="topk"}, {name="randk", unbiased=false}]',
            "pipeline.uplink.1: a second sparsifier 'randk' after 'topk'",
        ),
        (
            'pipeline.downlink=[{name="topk", fraction=0.5}]',
            "pipeline.downlink.0.error_feedback: must be false on pipeline.downlink",
        ),
        (
            'pipeline.uplink=[{name="randk", error_feedback=true}]',
            "pipeline.uplink.0: unbiased = true and error_feedback = true cannot be combined",
        ),
        (
            'pipeline.uplink=[{name="int8"}, {name="clip"}]',
            "pipeline.uplink.1: 'clip' (clip) cannot come after 'int8' (compress)",
        ),
        ('pipeline.uplink=[{name="topk", fraction=0}]', "pipeline.uplink.0.fraction"),
        ('pipeline.uplink=[{name="topk", fraction=1.5}]', "pipeline.uplink.0.fraction"),
        (
            'pipeline.uplink=[{name="int4", block_size=4}]',
            "pipeline.uplink.0.block_size: 0 or null (one scale per tensor) or an integer >= 8",
        ),
        ('pipeline.uplink=[{name="int8", block_size=-1}]', "pipeline.uplink.0.block_size"),
        ("comm.max_bytes=0", "comm.max_bytes"),
    ],
)
def test_invalid_pipelines_are_refused_at_config_time(override, message):
    with pytest.raises(ConfigError) as info:
        _load(override)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_pipelines_load():
    cfg = _load(
        'pipeline.uplink=[{name="clip"}, {name="topk", fraction=0.01}, '
        '{name="int4", block_size=64}]',
        'pipeline.downlink=[{name="randk", fraction=0.5, unbiased=false}, {name="int8"}]',
        "comm.max_bytes=1000000",
    )
    assert [s.name for s in cfg.pipeline.uplink] == ["clip", "topk", "int4"]
    assert cfg.pipeline.uplink[2].block_size == 64 and cfg.comm.max_bytes == 10**6
    assert (
        _load('pipeline.uplink=[{name="int8", block_size=0}]').pipeline.uplink[0].block_size is None
    )


class _MaskConfig(StageConfigBase):
    name: Literal["mask"] = "mask"
    kind: ClassVar[StageKind] = StageKind.MASK


class _Mask(StageBase):
    name = "mask"
    kind = StageKind.MASK


def test_sparsification_after_a_mask_stage_is_refused():
    with pytest.raises(
        ValueError, match="'topk' \\(compress\\) cannot come after 'mask' \\(mask\\)"
    ):
        check_pipeline([_MaskConfig(), TopKConfig()], "pipeline.uplink")
    with pytest.raises(ConfigError, match="'topk' \\(compress\\) cannot come after 'mask'"):
        Pipeline([_Mask(), TopK()])
    check_pipeline([TopKConfig(), _MaskConfig()], "pipeline.uplink")  # the valid order passes
