"""Client-level DP-FedAvg, configured: the checks that refuse unsafe set-ups, building the
uplink with its plan, and whole runs (budget stop, resume, adaptive clipping with DP-SGD,
the shipped configs/dp-fedavg.toml)."""

from __future__ import annotations

import itertools
import math

import pytest

from fedfm.config import PipelineConfig, load_config
from fedfm.errors import ConfigError
from fedfm.privacy.accountant import Accountant
from fedfm.privacy.configs import (
    AdaptiveClipConfig,
    DPSGDConfig,
    NoiseConfig,
    PrivacyConfig,
    PrivacyPlan,
    build_uplink,
    check_privacy,
)
from fedfm.privacy.noise import GaussianNoise
from fedfm.stages import ClipConfig, StageConfigBase, StageKind
from fedfm.strategies.base import UniformWeights
from tests.helpers import CONFIGS, TINY

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


def _strategy_name(cfg):
    return type(cfg.strategy).model_fields["name"].default


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


# --- whole runs ---------------------------------------------------------------------------

CENTRAL = [
    'pipeline.uplink=[{name="clip", clip_norm=1.0}, {name="noise", noise_multiplier=2.0}]',
    "privacy.weighting=uniform",
    "rounds=4",
]


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


def test_ffa_lora_with_poisson_sampling_and_central_noise_runs_on_tiny_bert(tmp_path):
    # Prepare: the tiny BERT job, FFA-LoRA, each of 6 clients sampled with q = 3/6
    from fedfm.run import run
    from tests.helpers import records

    cfg = load_config(
        None,
        [
            *TINY,
            "strategy.name=ffa-lora",
            "privacy.sampling=poisson",
            *CENTRAL[:2],
            "rounds=2",
        ],
    )
    # Execute
    final = run(cfg, tmp_path)
    # Assert: only B and the head travel (A stays at its seeded init), every round accounted
    rows = records(tmp_path)[1:]
    assert not any("lora_A" in k for k in final) and any("lora_B" in k for k in final)
    assert [r["round"] for r in rows] == [1, 2] and all(r["num_failures"] == 0 for r in rows)
    direct = Accountant("rdp", "poisson")
    direct.step(2.0, 0.5, 2)
    assert rows[-1]["noise/epsilon"] == pytest.approx(direct.epsilon(1e-5))


def test_the_shipped_dp_fedavg_config_is_the_default_job_with_client_level_dp():
    # Execute
    cfg = load_config(CONFIGS / "dp-fedavg.toml")
    default = load_config(CONFIGS / "default.toml")
    # Assert: the same job (model, data, split, clients), FFA-LoRA, clip + central noise
    for section in ("task", "adapter", "data", "partition", "client"):
        assert getattr(cfg, section) == getattr(default, section), section
    assert (cfg.rounds, cfg.seed) == (default.rounds, default.seed)
    assert _strategy_name(cfg) == "ffa-lora"
    assert [type(c) for c in cfg.pipeline.uplink] == [ClipConfig, NoiseConfig]
    assert cfg.pipeline.uplink[1].mode == "central"  # type: ignore[attr-defined]
    p = cfg.privacy
    assert (p.target_epsilon, p.delta, p.sampling, p.weighting) == (8.0, 1e-5, "poisson", "uniform")
    plan = PrivacyPlan.of(cfg, p, default.partition.num_clients)
    assert plan.sample_rate == 0.2 and plan.expected_clients == 10 and not plan.secure
    assert cfg.eval.federated_every is None and cfg.eval.personalize_steps == 0


def _first_empty_round(num_clients: int, per_round: int, rounds: int) -> tuple[int, int]:
    """(seed, round) of the first Poisson round that samples nobody, with the loop's rng."""
    import numpy as np

    from fedfm.strategies.base import ClientSampler

    sampler = ClientSampler(per_round, poisson=True)
    for seed in range(100):
        for server_round in range(1, rounds + 1):
            rng = np.random.default_rng([seed, server_round, 0x5A3D])
            if not sampler.sample(list(range(num_clients)), rng):
                return seed, server_round
    raise AssertionError("no empty round in 100 seeds")


@pytest.mark.parametrize("dp", [False, True])
def test_a_poisson_round_that_samples_nobody_keeps_the_state_or_releases_accounted_noise(
    dp, tmp_path
):
    # Prepare: q = 1/6 over 6 clients, a seed whose Poisson draw is empty in some round, and
    # a callback keeping each round's committed global state
    from fedfm.checkpoint import load_checkpoint
    from fedfm.run import run
    from tests.helpers import records

    seed, empty = _first_empty_round(6, 1, 3)
    sets = [*TINY, "strategy.name=ffa-lora", "strategy.clients_per_round=1", "rounds=3"]
    sets += ["privacy.sampling=poisson", f"seed={seed}"]
    if dp:
        sets += CENTRAL[:2]
    states = {}

    class Keep:
        def on_round_end(self, record):
            states[record.round] = load_checkpoint(tmp_path).global_state if record.round else None

    # Execute
    run(load_config(None, sets), tmp_path, callbacks=[Keep()])
    # Assert: the run went on past the empty round; without DP that round kept the state, with
    # DP it released noise on B and the head only (A stays), and every round is accounted
    rows = {r["round"]: r for r in records(tmp_path)}
    assert rows[empty]["num_clients"] == 0 and rows[empty]["update_norm"] is None
    assert max(rows) == 3
    if empty > 1:
        before, after = states[empty - 1], states[empty]
        moved = {k for k in after if not bool((after[k] == before[k]).all())}
        assert bool(moved) == dp
        assert not any("lora_A" in k for k in moved)
    if dp:
        direct = Accountant("rdp", "poisson")
        direct.step(2.0, 1 / 6, 3)
        assert rows[3]["noise/epsilon"] == pytest.approx(direct.epsilon(1e-5))
