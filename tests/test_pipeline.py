"""The update pipeline: stage order, encode/decode round trips, metrics, downlink."""

import pytest
import torch

from fedfm.compression.precision import BFloat16, Float16
from fedfm.config import load_config
from fedfm.errors import ConfigError, TransportError
from fedfm.pipeline import Pipeline, encode_broadcast
from fedfm.privacy.clip import ClipNorm
from fedfm.stages import build_stages
from fedfm.state import global_norm


def _update():
    return {"w": torch.full((4, 4), 3.0), "b": torch.ones(4)}


def _roundtrip(pipe, update, like):
    payload, metrics = pipe.encode(update, pipe.context(0, 1))
    return pipe.decode(payload, like, pipe.context(0, 1)), metrics, payload


def test_clip_scales_to_the_bound_leaves_small_updates_alone_and_reports():
    # Prepare
    pipe = Pipeline([ClipNorm(1.0)])
    like = _update()
    small = {k: v * 1e-3 for k, v in like.items()}
    # Execute
    clipped, metrics, _ = _roundtrip(pipe, like, like)
    kept, kept_metrics, _ = _roundtrip(pipe, small, like)
    # Assert
    assert global_norm(clipped) == pytest.approx(1.0, rel=1e-5)
    assert all(torch.equal(kept[k], small[k]) for k in small)
    assert metrics["clip/norm"] == pytest.approx(global_norm(like)) and metrics["clip/clipped"] == 1
    assert kept_metrics["clip/clipped"] == 0


def test_fp16_halves_float_bytes_and_restores_the_expected_dtype():
    like = {"w": torch.randn(64, 64), "b": torch.randn(64)}
    _, _, plain = _roundtrip(Pipeline(), like, like)
    back, _, half = _roundtrip(Pipeline([Float16()]), like, like)
    assert len(half) < 0.75 * len(plain)
    assert all(back[k].dtype == torch.float32 for k in back)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("stage", [Float16(), BFloat16()])
def test_honest_updates_of_half_precision_models_pass(dtype, stage):
    like = {"w": torch.randn(8, 8).to(dtype)}
    back, _, _ = _roundtrip(Pipeline([stage]), like, like)
    assert back["w"].dtype == dtype


def test_fp16_saturates_instead_of_overflowing_to_inf():
    like = {"w": torch.tensor([1e6, -1e6, 1.0, 2.0])}
    back, metrics, _ = _roundtrip(Pipeline([Float16()]), like, like)
    assert torch.isfinite(back["w"]).all()
    assert back["w"].tolist() == [65504.0, -65504.0, 1.0, 2.0]
    assert metrics["fp16/overflow"] == 0.5


def test_invalid_order_is_refused_at_config_time():
    with pytest.raises(ConfigError, match="'clip' \\(clip\\) cannot come after 'fp16'"):
        Pipeline(
            build_stages(
                load_config(
                    None, ['pipeline.uplink=[{name="fp16"}, {name="clip"}]']
                ).pipeline.uplink
            )
        )


def test_unknown_stage_names_the_valid_ones():
    with pytest.raises(ConfigError, match="'clip', 'fp16', 'bf16'"):
        load_config(None, ['pipeline.uplink=[{name="zip"}]'])


def test_decode_rejects_payload_shaped_unlike_the_model():
    like = _update()
    wrong = {"w": torch.zeros(4, 5), "b": torch.ones(4)}
    pipe = Pipeline()
    with pytest.raises(TransportError, match="expected"):
        _roundtrip(pipe, wrong, like)


def test_broadcast_is_encoded_once_and_a_lossless_downlink_is_exact():
    state = {"w": torch.randn(3, 3)}
    plain = encode_broadcast(Pipeline(), state, 1)
    half = encode_broadcast(Pipeline([Float16()]), state, 1)
    assert plain.state is state
    assert half.state["w"].dtype == torch.float32 and len(half.payload) < len(plain.payload)
    assert torch.allclose(half.state["w"], state["w"], atol=1e-2)
