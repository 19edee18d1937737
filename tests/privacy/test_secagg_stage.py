import numpy as np
import pytest
import torch

from fedfm.errors import AggregationError, ConfigError
from fedfm.pipeline import Pipeline, StageContext, StageKind
from fedfm.privacy.secagg import NotEnoughSurvivorsError, ProtocolError
from fedfm.privacy.secagg.stage import PAYLOAD_KEY, SecAggStage, flatten, unflatten
from fedfm.state import from_bytes, to_bytes

LIKE = {"lora_A": torch.zeros(4, 8), "head.bias": torch.zeros(3), "lora_B": torch.zeros(8, 2)}
ROUND, SEED = 3, 11


def _updates(ids, scale=0.05):
    gen = torch.Generator().manual_seed(0)
    return {
        c: {k: torch.randn(v.shape, generator=gen) * scale for k, v in LIKE.items()} for c in ids
    }


def _exchange(stage, messages, silent=()):
    """What a backend does: deliver each client's message, collect its answer."""
    return {c: stage.client_step(c, ROUND, data) for c, data in messages.items() if c not in silent}


def _round(stage, updates, drop_before_masking=(), drop_before_unmask=()):
    """One fedfm round through the stage: key exchange, fit (encode), decode, unmask."""
    ids = sorted(updates)
    setup = stage.open_round(ROUND, ids, LIKE, SEED)
    public_keys = stage.server_step(ROUND, _exchange(stage, setup))
    routed = stage.server_step(ROUND, _exchange(stage, public_keys))
    _exchange(stage, routed)
    # backend.fit: each client's pipeline encodes its update; bytes cross the wire
    pipeline = Pipeline([stage], seed=SEED)
    like = stage.wire_like(LIKE)
    payloads = {}
    for c in ids:
        if c in drop_before_masking:
            continue
        data, metrics = pipeline.encode(updates[c], pipeline.context(c, ROUND))
        payloads[c] = pipeline.decode(data, like, pipeline.context(c, ROUND))
        assert 0.0 <= metrics["secagg/clipped_fraction"] <= 1.0
    requests = stage.collect(ROUND, payloads)
    answers = _exchange(stage, requests, silent=drop_before_unmask)
    return stage.finish(ROUND, answers, LIKE, dict.fromkeys(ids, 10))


def test_a_round_through_the_stage_gives_the_mean_of_the_clipped_updates():
    # Prepare
    stage = SecAggStage(clip_range=0.1)
    updates = _updates(range(6))
    # Execute
    aggregate = _round(stage, updates, drop_before_masking={2}, drop_before_unmask={5})
    # Assert: clients 0, 1, 3, 4, 5 are in; client 2 dropped before masking
    survivors = (0, 1, 3, 4, 5)
    assert aggregate.client_ids == survivors and aggregate.num_clients == 5
    assert aggregate.total_weight == 50.0
    assert list(aggregate.update) == list(LIKE)
    fp = stage.fixed_point(6)
    for k, ref in LIKE.items():
        got = aggregate.update[k]
        assert got.shape == ref.shape and got.dtype == ref.dtype
        mean = torch.stack([updates[c][k].clamp(-0.1, 0.1) for c in survivors]).mean(0)
        assert float((got - mean).abs().max()) <= fp.error_bound(5, stochastic=True) / 5 + 1e-7
    # sessions end with the unmask answer (or, for a client that dropped, its next round)
    assert not stage.servers_ and sorted(stage.clients_) == [2, 5]


def test_the_server_sees_only_masked_words():
    # Prepare
    stage = SecAggStage(clip_range=0.1)
    updates = _updates(range(3))
    setup = stage.open_round(ROUND, [0, 1, 2], LIKE, SEED)
    routed = stage.server_step(
        ROUND, _exchange(stage, stage.server_step(ROUND, _exchange(stage, setup)))
    )
    _exchange(stage, routed)
    # Execute
    payload, _ = stage.encode(updates[0], StageContext(0, ROUND, SEED))
    # Assert: one vector of uint32 words, unrelated to the plain fixed-point codes
    (key,) = payload
    words = payload[key]
    codes = stage.fixed_point(3).encode(flatten(updates[0]))
    assert key == PAYLOAD_KEY and words.dtype == torch.uint32 and words.shape == (codes.size,)
    assert np.mean(np.abs(words.numpy().astype(np.int64) - codes.astype(np.int64)) < 2**24) < 0.05
    assert from_bytes(to_bytes(payload), stage.wire_like(LIKE))[key].equal(words)


def test_too_few_survivors_fail_the_round_as_an_aggregation_error():
    # Prepare: 4 clients, threshold 3; two do not answer the unmask request
    stage = SecAggStage(clip_range=0.1)
    # Execute / Assert: the loop catches AggregationError and keeps the global state
    with pytest.raises(NotEnoughSurvivorsError) as info:
        _round(stage, _updates(range(4)), drop_before_unmask={0, 1})
    assert isinstance(info.value, AggregationError)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"degree": 3}, "even"),
        ({"min_fraction": 0.0}, "min_fraction"),
        ({"clip_range": -1}, "clip"),
    ],
)
def test_bad_stage_settings_are_refused(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SecAggStage(**{"clip_range": 0.1, **kwargs})


def test_encode_without_a_key_exchange_or_for_an_extra_is_refused():
    stage = SecAggStage(clip_range=0.1)
    assert stage.kind == StageKind.MASK
    with pytest.raises(ProtocolError, match="no session for round 3"):
        stage.encode(_updates([0])[0], StageContext(0, ROUND, SEED))
    with pytest.raises(ProtocolError, match="not the extra 'control'"):
        stage.encode(_updates([0])[0], StageContext(0, ROUND, SEED, stream="control"))


def test_a_reply_in_another_clients_name_counts_as_a_dropout():
    # Prepare
    stage = SecAggStage(clip_range=0.1)
    setup = stage.open_round(ROUND, [0, 1, 2, 3], LIKE, SEED)
    replies = _exchange(stage, setup)
    replies[3] = replies[2]
    # Execute
    public_keys = stage.server_step(ROUND, replies)
    # Assert
    assert sorted(public_keys) == [0, 1, 2]
    assert stage.servers_[ROUND].dropped == {3: "sent a message as client 2"}


def test_flatten_and_unflatten_are_inverse():
    update = _updates([0])[0]
    out = unflatten(flatten(update), LIKE)
    assert list(out) == list(LIKE)
    assert all(torch.equal(out[k], update[k]) for k in LIKE)
