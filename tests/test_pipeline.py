import pytest
import torch

from fedfm.errors import ConfigError, TransportError
from fedfm.pipeline import ClipNorm, Float16, Pipeline, build_pipeline
from fedfm.state import global_norm


def _update():
    return {"w": torch.full((4, 4), 3.0), "b": torch.ones(4)}


def test_clip_scales_to_the_bound_and_leaves_small_updates_alone():
    # Prepare
    pipe = Pipeline([ClipNorm(1.0)])
    like = _update()
    small = {k: v * 1e-3 for k, v in like.items()}
    # Execute
    clipped = pipe.decode(pipe.encode(like, 0, 1), like, 0, 1)
    kept = pipe.decode(pipe.encode(small, 0, 1), like, 0, 1)
    # Assert
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(kept[k], small[k]) for k in small)


def test_fp16_halves_float_bytes_and_restores_dtype():
    like = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    plain = Pipeline().encode(like, 0, 1)
    half = Pipeline([Float16()]).encode(like, 0, 1)
    back = Pipeline([Float16()]).decode(half, like, 0, 1)
    assert len(half) < 0.75 * len(plain)
    assert all(back[k].dtype == torch.float32 for k in back)


def test_invalid_order_is_refused_at_build_time():
    with pytest.raises(ConfigError, match="'clip' \\(clip\\) cannot come after 'fp16'"):
        build_pipeline(["fp16", "clip"], 1.0, 0)


def test_unknown_transform_names_the_valid_ones():
    with pytest.raises(ConfigError, match="clip, fp16"):
        build_pipeline(["zip"], 1.0, 0)


def test_decode_rejects_payload_shaped_unlike_the_model():
    like = _update()
    wrong = {"w": torch.zeros(4, 5), "b": torch.ones(4)}
    with pytest.raises(TransportError, match="expected"):
        Pipeline().decode(Pipeline().encode(wrong, 3, 1), like, 3, 1)
