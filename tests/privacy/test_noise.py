"""Client-level DP-FedAvg: clipping, the noise stage (central and distributed), its
randomness, its accountant, the budget stop, adaptive clipping, and the config checks."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from fedfm.config import Config, PipelineConfig, load_config
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
from fedfm.privacy.configs import (
    AdaptiveClipConfig,
    DPSGDConfig,
    NoiseConfig,
    PrivacyConfig,
    PrivacyPlan,
    build_uplink,
    check_privacy,
)
from fedfm.privacy.noise import GaussianNoise, secure_normal
from fedfm.stages import ClipConfig, StageConfigBase, StageKind
from fedfm.state import global_norm
from fedfm.strategies.base import Aggregate, ClientSampler, StrategyBase, UniformWeights
from tests.helpers import TINY

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


# --- config checks and building --------------------------------------------------------


class _SecAggEntry(StageConfigBase):
    """Stands for the secure-aggregation stage entry (kind mask) in these checks."""

    name: str = "secagg"
    kind = StageKind.MASK


def _cfg(*uplink, strategy="fedavg", downlink=()):
    cfg = load_config(None, [*TINY, f"strategy.name={strategy}"])
    pipe = PipelineConfig.model_construct(uplink=list(uplink), downlink=list(downlink))
    return cfg.model_copy(update={"pipeline": pipe})


UNIFORM = PrivacyConfig(weighting="uniform")


@pytest.mark.parametrize(
    ("uplink", "privacy", "strategy", "message"),
    [
        ([NoiseConfig(noise_multiplier=1.0)], UNIFORM, "fedavg", "needs a 'clip' or"),
        ([ClipConfig(), NoiseConfig(noise_multiplier=1.0)], PrivacyConfig(), "fedavg", "uniform"),
        ([ClipConfig(), NoiseConfig()], UNIFORM, "fedavg", "set noise_multiplier or privacy"),
        ([ClipConfig()], PrivacyConfig(target_epsilon=3.0), "fedavg", "needs a 'noise' stage"),
        ([ClipConfig(), NoiseConfig(noise_multiplier=1.0)], UNIFORM, "median", "'sum'"),
        (
            [AdaptiveClipConfig(), NoiseConfig(noise_multiplier=1.0, mode="distributed")],
            UNIFORM,
            "fedavg",
            "central noise only",
        ),
        (
            [AdaptiveClipConfig(), NoiseConfig(noise_multiplier=1.0)],
            UNIFORM,
            "fedavg",
            "count_noise_multiplier",  # n = 3 clients: sigma_b = 3/20 <= z/2
        ),
        ([AdaptiveClipConfig(count_noise_multiplier=5.0)], UNIFORM, "scaffold", "extras"),
        ([ClipConfig()], PrivacyConfig(accountant="pld"), "fedavg", "privacy.sampling='poisson'"),
        ([], PrivacyConfig(dpsgd=DPSGDConfig()), "fedavg", "adapter.method='prompt'"),
    ],
)
def test_unsafe_privacy_setups_are_refused_in_one_line(uplink, privacy, strategy, message):
    cfg = _cfg(*uplink, strategy=strategy)
    if privacy.dpsgd is not None:
        cfg = cfg.model_copy(
            update={"adapter": cfg.adapter.model_copy(update={"method": "prompt"})}
        )
    with pytest.raises(ConfigError, match=message) as err:
        check_privacy(cfg, privacy)
    assert "\n" not in str(err.value)


def test_out_of_range_budget_values_name_the_field():
    with pytest.raises(ValueError, match="target_epsilon"):
        PrivacyConfig(target_epsilon=0.0)
    with pytest.raises(ValueError, match="delta"):
        PrivacyConfig(delta=1.0)
    with pytest.raises(ConfigError, match=r"belongs in pipeline\.uplink"):
        check_privacy(_cfg(downlink=[NoiseConfig(noise_multiplier=1.0)]), UNIFORM)


def test_adaptive_clipping_is_refused_with_secure_aggregation():
    cfg = _cfg(AdaptiveClipConfig(count_noise_multiplier=5.0), _SecAggEntry())
    with pytest.raises(ConfigError, match="central noise only"):
        check_privacy(cfg, UNIFORM)


def test_scaffold_extras_are_clipped_noised_and_accounted_as_a_second_stream():
    cfg = _cfg(ClipConfig(clip_norm=0.5), NoiseConfig(noise_multiplier=1.0), strategy="scaffold")
    check_privacy(cfg, UNIFORM)
    stages = build_uplink(cfg.pipeline.uplink, cfg, UNIFORM, 6)
    noise = stages[-1]
    assert isinstance(noise, GaussianNoise) and noise.streams == 2
    assert noise.update_noise_multiplier == pytest.approx(math.sqrt(2))


def test_build_uplink_calibrates_sigma_for_the_planned_rounds():
    # Prepare: 3 of 6 clients per round, 3 rounds, target epsilon 5
    privacy = PrivacyConfig(weighting="uniform", target_epsilon=5.0, sampling="poisson")
    cfg = _cfg(AdaptiveClipConfig(count_noise_multiplier=10.0), NoiseConfig())
    check_privacy(cfg, privacy)
    # Execute
    clip, noise = build_uplink(cfg.pipeline.uplink, cfg, privacy, 6)
    # Assert
    plan = PrivacyPlan.of(cfg, privacy, 6)
    assert plan.sample_rate == 0.5 and plan.expected_clients == 3 and not plan.secure
    assert isinstance(noise, GaussianNoise) and noise.clip is clip
    eps = noise.accountant.epsilon_after(noise.noise_multiplier, 0.5, 1e-5, cfg.rounds)
    assert eps <= 5.0 and noise.stop_reason(1) is None
    with pytest.raises(ConfigError, match="build_uplink"):
        NoiseConfig().build()


def test_a_run_stops_cleanly_before_the_budget_is_exceeded(tmp_path):
    # Prepare: the digits job, clip + central noise, a budget that two rounds fit
    from fedfm.backends.inprocess import InProcessBackend
    from fedfm.build import build
    from fedfm.pipeline import Pipeline
    from fedfm.run import loop_parts
    from fedfm.server.loop import run_rounds
    from tests.helpers import toy_config

    probe = Accountant("rdp", "fixed", 4)
    probe.step(2.0, 0.5, 2)
    privacy = PrivacyConfig(weighting="uniform", target_epsilon=probe.epsilon(1e-5) * 1.01)
    cfg = toy_config("rounds=5", "eval.initial=false")
    stages = [ClipConfig(clip_norm=1.0), NoiseConfig(noise_multiplier=2.0)]
    built = build(cfg)
    built.uplink = built.runtime.uplink = Pipeline(build_uplink(stages, cfg, privacy, 4))
    built.strategy = UniformWeights(built.strategy)
    # Execute
    with InProcessBackend(built.runtime) as backend:
        parts = loop_parts(built, backend, tmp_path, [], None)
        run_rounds(parts, built.initial_state)
    # Assert
    noise = built.uplink.stages[-1]
    assert isinstance(noise, GaussianNoise) and len(noise.accountant.ledger) == 2
    assert parts.stopped is not None and "before round 3" in parts.stopped
    assert noise.server_metrics()["epsilon"] <= privacy.target_epsilon


# --- whole runs (need the wiring: the [privacy] section, stage registry, loop seams) -------

wired = pytest.mark.skipif(
    "privacy" not in Config.model_fields, reason="needs the [privacy] config section wired in"
)
CENTRAL = [
    'pipeline.uplink=[{name="clip", clip_norm=1.0}, {name="noise", noise_multiplier=2.0}]',
    "privacy.weighting=uniform",
    "rounds=4",
]


@wired
def test_a_private_run_reports_epsilon_every_round_and_resumes_identically(tmp_path):
    # Prepare
    from fedfm.run import run, stored_config
    from tests.helpers import StopAfter, records, states_equal, toy_config

    cfg = toy_config(*CENTRAL)
    # Execute: one run straight through, one killed after round 2 and resumed
    full = run(cfg, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(cfg, tmp_path / "cut", callbacks=[StopAfter(2)])
    resumed = run(stored_config(tmp_path / "cut"), tmp_path / "cut", resume=True)
    # Assert
    eps = [r["noise/epsilon"] for r in records(tmp_path / "full")[1:]]
    assert len(eps) == 4 and all(a < b for a, b in itertools.pairwise(eps))
    assert [r["noise/epsilon"] for r in records(tmp_path / "cut")[1:]] == eps
    assert states_equal(full, resumed)
    direct = Accountant("rdp", "fixed", 4)
    direct.step(2.0, 0.5, 4)
    assert eps[-1] == pytest.approx(direct.epsilon(1e-5))


@wired
def test_adaptive_clipping_and_dpsgd_run_end_to_end(tmp_path):
    from fedfm.run import run
    from tests.helpers import records, toy_config

    cfg = toy_config(
        'pipeline.uplink=[{name="adaptive-clip", clip_norm=0.01, count_noise_multiplier=2.0}, '
        '{name="noise", noise_multiplier=1.0}]',
        "privacy.weighting=uniform",
        "privacy.dpsgd.noise_multiplier=1.0",
        "rounds=3",
    )
    run(cfg, tmp_path)
    rows = records(tmp_path)[1:]
    bounds = [r["adaptive-clip/clip_norm"] for r in rows]
    assert bounds[0] == 0.01 and bounds[-1] > bounds[0]  # every update is clipped: C grows
    assert all(r["dpsgd/epsilon"] > 0 for r in rows) and rows[-1]["noise/epsilon"] > 0


@wired
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (['pipeline.uplink=[{name="noise", noise_multiplier=1.0}]'], "needs a 'clip'"),
        (["privacy.delta=2"], r"privacy\.delta: Input should be less than 1"),
        (["privacy.target_epsilon=0"], r"privacy\.target_epsilon: Input should be greater"),
        (CENTRAL[:1], r"needs privacy\.weighting='uniform'"),
    ],
)
def test_config_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_config(None, [*TINY, *overrides])
    assert "\n" not in str(err.value)
