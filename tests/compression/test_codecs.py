"""int8 / int4 / top-k / random-k as stages: error bounds, unbiasedness, error feedback,
exact sizes, and refusal of malformed payloads."""

import math

import pytest
import torch

from fedfm.client.state import DirectoryStore, InMemoryStore
from fedfm.compression.precision import Float16
from fedfm.compression.quantize import Quantise
from fedfm.compression.sparsify import RandK, TopK, keep_count
from fedfm.errors import TransportError
from fedfm.pipeline import Pipeline, StageContext
from fedfm.state import to_bytes


def _update(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "a.lora_A": torch.randn(8, 48, generator=g) * 0.01,
        "a.lora_B": torch.randn(48, 8, generator=g),
        "head.bias": torch.randn(3, generator=g),  # odd total: int4 pads one nibble
        "steps": torch.tensor([7], dtype=torch.int64),  # non-floating: passed through
    }


def _ctx(server_round=1, client_id=0, store=None):
    return StageContext(client_id, server_round, seed=0, stream="update", store=store)


def _blocks(x, size):
    flat = x.reshape(-1)
    return [flat[i : i + size] for i in range(0, flat.numel(), size)]


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("block_size", [None, 16])
def test_quantiser_round_trip_error_is_at_most_one_step(bits, block_size):
    # Prepare
    update = _update()
    stage = Quantise(bits, block_size)
    pipe = Pipeline([stage])
    # Execute
    payload, metrics = pipe.encode(update, _ctx())
    back = pipe.decode(payload, update, _ctx())
    # Assert: every entry within one quantisation step of its own block's scale
    for k, x in update.items():
        if not x.is_floating_point():
            assert torch.equal(back[k], x)
            continue
        size = block_size or x.numel()
        for xb, db in zip(_blocks(x, size), _blocks(back[k], size), strict=True):
            step = float(xb.abs().max()) / stage.levels
            assert float((db - xb).abs().max()) <= step * (1 + 1e-5) + 1e-12
    assert metrics[f"int{bits}/rel_error"] > 0


def test_per_block_scales_beat_one_scale_when_magnitudes_differ():
    x = {"w": torch.cat([torch.randn(512) * 100, torch.randn(512) * 0.01])}
    errors = {}
    for block_size in (None, 64):
        stage = Quantise(8, block_size)
        _, metrics = stage.encode(x, _ctx())
        errors[block_size] = metrics["rel_error"]
    assert errors[64] < errors[None]
    wire = Quantise(8, 64).wire_like(x)
    assert wire["int8/scale"].numel() == 1024 // 64


@pytest.mark.parametrize(
    "stage", [Quantise(8), Quantise(4), Quantise(8, 16)], ids=["int8", "int4", "int8-block"]
)
def test_stochastic_rounding_is_unbiased(stage):
    # Prepare: entries at fractional positions between levels; round-to-nearest is biased
    levels = torch.arange(-20, 20, dtype=torch.float32) * 0.1 + 0.3
    x = {"w": levels / levels.abs().max() * 1.7}
    n = 2000
    # Execute: many encodings with different (round) seeds
    total = torch.zeros_like(x["w"])
    for r in range(n):
        wire, _ = stage.encode(x, _ctx(server_round=r))
        total += stage.decode(wire, x, _ctx(server_round=r))["w"]
    mean = total / n
    # Assert: within 5 standard errors; a step is the largest error of one encoding
    step = float(x["w"].abs().max()) / stage.levels
    assert float((mean - x["w"]).abs().max()) < 5 * step / (2 * math.sqrt(n))


def test_random_k_unbiased_scales_by_n_over_k_and_averages_to_the_input():
    x = {"w": torch.linspace(-1, 1, 40)}
    stage = RandK(0.25, error_feedback=False, unbiased=True)
    n = 2000
    total = torch.zeros(40)
    for r in range(n):
        wire, _ = stage.encode(x, _ctx(server_round=r))
        total += stage.decode(wire, x, _ctx(server_round=r))["w"]
        assert wire["randk/values"].numel() == 10
    std = math.sqrt(40 / 10 - 1) / math.sqrt(n)  # per entry, relative to |x| <= 1
    assert float((total / n - x["w"]).abs().max()) < 5 * std


def test_random_k_draws_are_seeded_by_round_and_client():
    x = {"w": torch.randn(100)}
    stage = RandK(0.1, unbiased=False)
    a = stage.encode(x, _ctx(1, 3))[0]["randk/indices"]
    assert torch.equal(a, stage.encode(x, _ctx(1, 3))[0]["randk/indices"])
    assert not torch.equal(a, stage.encode(x, _ctx(2, 3))[0]["randk/indices"])
    assert not torch.equal(a, stage.encode(x, _ctx(1, 4))[0]["randk/indices"])


def test_topk_is_exact_on_the_kept_entries_and_keeps_the_largest():
    # Prepare
    update = _update()
    pipe = Pipeline([TopK(0.1, error_feedback=False)])
    # Execute
    payload, _ = pipe.encode(update, _ctx())
    back = pipe.decode(payload, update, _ctx())
    # Assert
    for k, x in update.items():
        if not x.is_floating_point():
            continue
        kept = back[k] != 0
        assert int(kept.sum()) == keep_count(x.numel(), 0.1)
        assert torch.equal(back[k][kept], x[kept])
        assert float(x[~kept].abs().max()) <= float(x[kept].abs().min())


@pytest.mark.parametrize("store_kind", ["memory", "directory"])
def test_error_feedback_conserves_mass(store_kind, tmp_path):
    # Prepare
    store = InMemoryStore() if store_kind == "memory" else DirectoryStore(tmp_path)
    pipe = Pipeline([TopK(0.05)])
    like = _update()
    sent = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in like.items()}
    true = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in like.items()}
    # Execute
    for r in range(1, 8):
        update = _update(seed=r)
        payload, _ = pipe.encode(update, _ctx(r, 5, store))
        back = pipe.decode(payload, like, _ctx(r, 5))
        for k in like:
            if like[k].is_floating_point():
                sent[k] += back[k].double()
                true[k] += update[k].double()
    residual = store.get(5, "ef.update")
    # Assert: what was sent plus what is still owed is what the client meant to send
    assert residual is not None and set(residual) == {"a.lora_A", "a.lora_B", "head.bias"}
    for k, r in residual.items():
        assert torch.allclose(sent[k] + r.double(), true[k], atol=1e-5, rtol=0)
    assert float(residual["a.lora_B"].abs().sum()) > 0  # something was held back


def test_a_residual_on_disk_is_read_back_bit_for_bit(tmp_path):
    update = _update()
    TopK(0.1).encode(update, _ctx(1, 2, DirectoryStore(tmp_path)))
    memory = InMemoryStore()
    TopK(0.1).encode(update, _ctx(1, 2, memory))
    on_disk = DirectoryStore(tmp_path).get(2, "ef.update")  # a new process, same directory
    assert on_disk is not None
    assert all(torch.equal(on_disk[k], v) for k, v in memory.get(2, "ef.update").items())


PIPELINES = {
    "fp16": [Float16()],
    "int8": [Quantise(8)],
    "int8-block": [Quantise(8, 16)],
    "int4": [Quantise(4)],
    "int4-block": [Quantise(4, 16)],
    "topk": [TopK(0.1)],
    "randk": [RandK(0.1)],
    "topk+int8": [TopK(0.1), Quantise(8)],
    "topk+fp16": [TopK(0.3), Float16()],
}


@pytest.mark.parametrize("name", sorted(PIPELINES))
def test_predicted_size_is_the_serialised_payload_size(name):
    pipe = Pipeline(PIPELINES[name])
    update = _update()
    payload, metrics = pipe.encode(update, _ctx(store=InMemoryStore()))
    assert pipe.encoded_size(update) == len(payload)
    assert pipe.decode(payload, update, _ctx()).keys() == update.keys()
    assert all(0 < v < 1 for k, v in metrics.items() if k.endswith("/ratio"))


def test_int8_sends_a_quarter_of_the_fp32_bytes_on_a_lora_sized_update():
    like = {f"layer.{i}.lora_{ab}": torch.randn(8, 384) for i in range(12) for ab in "AB"}
    fp32 = len(Pipeline().encode(like, _ctx())[0])
    int8 = len(Pipeline([Quantise(8)]).encode(like, _ctx())[0])
    assert int8 <= fp32 / 4


def _tamper(stages, change):
    """Encode a real update, apply `change` to the wire tensors, decode the bytes."""
    pipe = Pipeline(stages)
    like = _update()
    wire = dict(like)
    for stage in stages:
        wire, _ = stage.encode(wire, _ctx(store=InMemoryStore()))
    change(wire)
    pipe.decode(to_bytes(wire), like, _ctx())


def _set(key, fn):
    def change(wire):
        wire[key] = fn(wire[key])

    return change


MALFORMED = {
    "int8 codes too short": ([Quantise(8)], _set("int8/q", lambda t: t[:-1])),
    "int8 codes as int16": ([Quantise(8)], _set("int8/q", lambda t: t.to(torch.int16))),
    "int8 code -128": (
        [Quantise(8)],
        _set("int8/q", lambda t: t.index_fill(0, torch.tensor([0]), -128)),
    ),
    "negative scale": ([Quantise(8)], _set("int8/scale", lambda t: -t)),
    "NaN scale": ([Quantise(8)], _set("int8/scale", lambda t: t * float("nan"))),
    "huge scale": ([Quantise(8)], _set("int8/scale", lambda t: t * 0 + 3e38)),
    "missing scale": ([Quantise(8)], lambda w: w.pop("int8/scale")),
    "unexpected tensor": ([Quantise(8)], lambda w: w.update(extra=torch.zeros(1))),
    "int4 packed too long": ([Quantise(4)], _set("int4/q", lambda t: torch.cat([t, t[:1]]))),
    "int4 code 0": ([Quantise(4)], _set("int4/q", lambda t: t.index_fill(0, torch.tensor([0]), 0))),
    "index out of range": (
        [TopK(0.1)],
        _set("topk/indices", lambda t: t.index_fill(0, torch.tensor([0]), 10**6)),
    ),
    "negative index": (
        [TopK(0.1)],
        _set("topk/indices", lambda t: t.index_fill(0, torch.tensor([0]), -1)),
    ),
    "repeated index": (
        [TopK(0.1)],
        _set("topk/indices", lambda t: t.index_fill(0, torch.tensor([1]), int(t[0]))),
    ),
    "int64 indices": ([TopK(0.1)], _set("topk/indices", lambda t: t.long())),
    "values too long": ([TopK(0.1)], _set("topk/values", lambda t: torch.cat([t, t[:1]]))),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_payloads_raise_transport_error(case):
    stages, change = MALFORMED[case]
    _tamper(stages, lambda w: None)  # the untouched payload decodes
    with pytest.raises(TransportError):
        _tamper(stages, change)
