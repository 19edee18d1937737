"""Client-level DP-FedAvg: clipping, the noise stage (central and distributed), its
randomness, its accountant, the budget stop, adaptive clipping, weights and sampling (the
config checks and whole runs are in test_noise_runs.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedfm.errors import ConfigError
from fedfm.messages import FitResult, FitTask
from fedfm.pipeline import StageContext
from fedfm.privacy.accountant import Accountant
from fedfm.privacy.adaptive import (
    UNCLIPPED_KEY,
    AdaptiveClipNorm,
    effective_noise_multiplier,
    update_noise_multiplier,
)
from fedfm.privacy.clip import ClipNorm
from fedfm.privacy.noise import GaussianNoise, secure_normal
from fedfm.state import global_norm
from fedfm.strategies.base import Aggregate, ClientSampler, StrategyBase, UniformWeights

N = 200_000  # entries per empirical std check: relative error of the estimate ~ 0.2 %


def _noise(mode="central", z=1.2, n=10, clip=0.5, secure=False, target=None, q=0.1):
    return GaussianNoise(
        ClipNorm(clip),
        noise_multiplier=z,
        mode=mode,
        expected_clients=n,
        accountant=Accountant("rdp"),
        sample_rate=q,
        delta=1e-5,
        target_epsilon=target,
        secure=secure,
        seed=7,
    )


def _ctx(client=0, server_round=1, stream="update"):
    return StageContext(client, server_round, 0, stream)


def _zeros_aggregate(n, size=N):
    return Aggregate({"w": torch.zeros(size)}, num_clients=n, client_ids=tuple(range(n)))


def _round(stage, server_round, n=10):
    return stage.server_postprocess(_zeros_aggregate(n, 8), server_round)


# --- clipping --------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), min_size=1, max_size=4),
    scale=st.floats(1e-6, 1e6),
    clip=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31),
)
def test_clipped_norms_never_exceed_clip_norm(shapes, scale, clip, seed):
    gen = torch.Generator().manual_seed(seed)
    update = {f"t{i}": torch.randn(s, generator=gen) * scale for i, s in enumerate(shapes)}
    fixed, _ = ClipNorm(clip).encode(update, _ctx())
    adaptive = AdaptiveClipNorm(clip, count_noise_multiplier=1.0, expected_clients=5)
    moved, _ = adaptive.encode(update, _ctx())
    moved.pop(UNCLIPPED_KEY)
    assert global_norm(fixed) <= clip * (1 + 1e-5)
    assert global_norm(moved) <= clip * (1 + 1e-5)


# --- the noise and where it comes from ---------------------------------------------------


def test_secure_normals_are_standard_normal():
    z = secure_normal(N + 1)  # odd: the last pair is cut
    assert len(z) == N + 1 and abs(z.mean()) < 0.01 and z.std() == pytest.approx(1.0, rel=0.01)
    assert stats.kstest(z, "norm").pvalue > 1e-3


@pytest.mark.parametrize("secure", [False, True])
def test_central_noise_on_the_sum_has_std_sigma_times_c(secure):
    # Prepare: ten clients whose clipped updates are zero; the mean is the sum over n = 10
    stage = _noise("central", z=1.2, n=10, clip=0.5, secure=secure)
    # Execute
    out = stage.server_postprocess(_zeros_aggregate(10), 1)
    # Assert: sigma * C on the sum, sigma * C / n on the mean
    assert float((out.update["w"] * 10).std()) == pytest.approx(1.2 * 0.5, rel=0.02)
    assert stage.server_metrics()["secure"] == float(secure)


@pytest.mark.parametrize("secure", [False, True])
def test_distributed_noise_per_client_has_std_sigma_c_over_sqrt_n(secure):
    stage = _noise("distributed", z=1.2, n=16, clip=0.5, secure=secure)
    one, metrics = stage.encode({"w": torch.zeros(N)}, _ctx(client=3))
    shares = [stage.encode({"w": torch.zeros(N // 16)}, _ctx(client=c))[0]["w"] for c in range(16)]
    total = torch.stack(shares).sum(0)
    assert float(one["w"].std()) == pytest.approx(1.2 * 0.5 / 4, rel=0.02)
    assert metrics["std"] == pytest.approx(1.2 * 0.5 / 4)
    assert float(total.std()) == pytest.approx(1.2 * 0.5, rel=0.03)  # the sum: sigma * C
    out = stage.server_postprocess(Aggregate({"w": total / 16}, num_clients=16), 1)
    assert torch.allclose(out.update["w"], total / 16)  # the server adds nothing


def test_seeded_noise_is_reproducible_and_secure_noise_is_not():
    update = {"w": torch.zeros(64)}
    seeded, again = _noise("distributed"), _noise("distributed")
    secure = _noise("distributed", secure=True)
    a = seeded.encode(update, _ctx(client=1))[0]["w"]
    assert torch.equal(a, again.encode(update, _ctx(client=1))[0]["w"])
    assert not torch.equal(a, seeded.encode(update, _ctx(client=2))[0]["w"])
    assert not torch.equal(a, seeded.encode(update, _ctx(client=1, server_round=2))[0]["w"])
    s1, s2 = (secure.encode(update, _ctx(client=1))[0]["w"] for _ in range(2))
    assert not torch.equal(s1, s2)


def test_the_mean_divides_by_the_expected_cohort_and_extras_are_noised_too():
    # Prepare: 8 of 10 expected clients replied; their mean update is 1 everywhere
    stage = _noise("central", z=1e-9, n=10)
    agg = Aggregate({"w": torch.ones(4)}, {"x": {"c": torch.ones(3)}}, num_clients=8)
    # Execute
    out = stage.server_postprocess(agg, 1)
    # Assert: sum / n (fixed denominator), for the extras too
    assert torch.allclose(out.update["w"], torch.full((4,), 0.8))
    assert torch.allclose(out.extras["x"]["c"], torch.full((3,), 0.8))
    noisy = _noise("central", z=1.0, n=10).server_postprocess(agg, 1)
    assert not torch.allclose(noisy.extras["x"]["c"], torch.full((3,), 0.8))


# --- accounting ------------------------------------------------------------------------


def test_each_round_is_accounted_and_reported():
    stage = _noise("central", z=1.2, q=0.1)
    for r in (1, 2, 3):
        _round(stage, r)
    direct = Accountant("rdp")
    direct.step(1.2, 0.1, 3)
    metrics = stage.server_metrics()
    assert metrics["epsilon"] == pytest.approx(direct.epsilon(1e-5), rel=1e-12)
    assert metrics["delta"] == 1e-5 and metrics["noise_multiplier"] == 1.2
    assert metrics["clip_norm"] == 0.5 and metrics["secure"] == 0.0


def test_distributed_rounds_with_dropouts_are_charged_their_realised_noise():
    stage = _noise("distributed", z=1.2, n=10)
    stage.server_postprocess(Aggregate({"w": torch.zeros(2)}, num_clients=6), 1)
    entry = stage.accountant.ledger[-1]
    assert entry.noise_multiplier == pytest.approx(1.2 * math.sqrt(6 / 10))


def test_stop_reason_fires_before_a_round_would_exceed_the_target():
    # Prepare: a target that three rounds fit and four do not
    probe = Accountant("rdp")
    probe.step(1.2, 0.1, 3)
    target = probe.epsilon(1e-5) * 1.001
    stage = _noise("central", z=1.2, q=0.1, target=target)
    # Execute
    reasons = []
    for r in (1, 2, 3, 4):
        reasons.append(stage.stop_reason(r))
        if reasons[-1] is None:
            _round(stage, r)
    # Assert
    assert reasons[:3] == [None, None, None]
    assert reasons[3] is not None and "before round 4" in reasons[3]
    assert "privacy.target_epsilon" in reasons[3] and "\n" not in reasons[3]
    assert stage.accountant.epsilon(1e-5) <= target and len(stage.accountant.ledger) == 3


def test_the_stage_ledger_survives_a_kill():
    whole, first = _noise(), _noise()
    expected = []
    for r in range(1, 6):
        _round(whole, r)
        expected.append(whole.server_metrics()["epsilon"])
    got = []
    for r in range(1, 3):
        _round(first, r)
        got.append(first.server_metrics()["epsilon"])
    resumed = _noise(z=9.9)  # the stored multiplier wins over the configured one
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for r in range(3, 6):
        _round(resumed, r)
        got.append(resumed.server_metrics()["epsilon"])
    assert got == expected and resumed.noise_multiplier == 1.2


# --- adaptive clipping -----------------------------------------------------------------


def test_theorem_one_splits_the_noise_between_update_and_count():
    sigma = update_noise_multiplier(1.0, count_noise_multiplier=2.0)
    assert sigma == pytest.approx((1.0 - 1 / 16) ** -0.5)
    assert effective_noise_multiplier(sigma, 2.0) == pytest.approx(1.0)
    assert update_noise_multiplier(1.0, None, streams=2) == pytest.approx(math.sqrt(2))
    with pytest.raises(ConfigError, match="count_noise_multiplier must be > noise_multiplier / 2"):
        update_noise_multiplier(1.0, count_noise_multiplier=0.5)


@pytest.mark.parametrize("quantile", [0.3, 0.7])
def test_adaptive_clipping_moves_the_bound_to_the_target_quantile(quantile):
    # Prepare: 50 clients a round, update norms log-normal around 1, C starts at 0.05
    rng = np.random.default_rng(0)
    stage = AdaptiveClipNorm(
        0.05, target_quantile=quantile, count_noise_multiplier=2.5, expected_clients=50
    )
    # Execute
    for r in range(1, 151):
        for c in range(50):
            norm = float(np.exp(rng.normal(0.0, 0.5)))
            update = {"w": torch.tensor([norm, 0.0])}
            payload, _ = stage.encode(update, _ctx(c, r))
            stage.decode(payload, update, _ctx(c, r))
        stage.server_postprocess(Aggregate({}, num_clients=50, client_ids=tuple(range(50))), r)
    # Assert: C sits near the quantile of exp(N(0, 0.5^2))
    truth = math.exp(0.5 * stats.norm.ppf(quantile))
    assert stage.clip_norm == pytest.approx(truth, rel=0.2)
    assert stage.server_metrics()["clip_norm"] > 0


def test_the_bound_reaches_clients_through_their_tasks_and_is_checkpointed():
    stage = AdaptiveClipNorm(0.7, count_noise_multiplier=1.0, expected_clients=2)
    tasks = stage.configure_tasks([FitTask(0, 1), FitTask(1, 1)], 1)
    assert [t.overrides.clip_norm for t in tasks] == [0.7, 0.7]
    update = {"w": torch.ones(2)}
    payload, _ = stage.encode(update, _ctx())
    assert set(stage.wire_like(update)) == set(payload)
    stage.load_state_dict({"clip_norm": 0.3})
    assert stage.state_dict() == {"clip_norm": 0.3}


def test_a_client_cannot_weigh_more_than_one_vote():
    stage = AdaptiveClipNorm(1.0, count_noise_multiplier=1e-9, expected_clients=1)
    forged = {"w": torch.zeros(2), UNCLIPPED_KEY: torch.tensor([1e6])}
    assert UNCLIPPED_KEY not in stage.decode(forged, {}, _ctx())
    stage.server_postprocess(Aggregate({}, num_clients=1, client_ids=(0,)), 1)
    assert stage.server_metrics()["unclipped_fraction"] == pytest.approx(1.0)


# --- weights and sampling ----------------------------------------------------------------


def test_uniform_weights_make_the_mean_plain():
    inner = StrategyBase(ClientSampler(2))
    results = [
        FitResult(0, 1, {"w": torch.tensor([0.0])}),
        FitResult(1, 99, {"w": torch.tensor([1.0])}),
    ]
    assert float(inner.reduce(1, {}, results).update["w"]) == pytest.approx(0.99)
    assert float(UniformWeights(inner).reduce(1, {}, results).update["w"]) == pytest.approx(0.5)


def test_poisson_sampling_includes_each_client_with_probability_q():
    sampler = ClientSampler(10, poisson=True)
    sizes = [len(sampler.sample(range(50), np.random.default_rng(r))) for r in range(400)]
    assert np.mean(sizes) == pytest.approx(10, rel=0.05) and len(set(sizes)) > 5
    assert sampler.sample(range(50), np.random.default_rng(1)) == sampler.sample(
        range(50), np.random.default_rng(1)
    )
