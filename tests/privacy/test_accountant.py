"""The accountant: ε against dp-accounting and Opacus, the published reference, the ledger
across a kill, calibration that never overshoots, and its refusals."""

from __future__ import annotations

import itertools
import json

import dp_accounting
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedfm.errors import ConfigError
from fedfm.privacy.accountant import Accountant, calibrate_noise, quiet_absl

CASES = [  # (sigma, q, steps, delta)
    (1.5, 0.04, 2250, 1e-5),
    (1.0, 0.2, 10, 1e-5),
    (0.8, 0.01, 500, 1e-6),
    (2.0, 0.1, 100, 1e-5),
]


def _direct(sigma, q, steps, delta, pld=False):
    acc = dp_accounting.pld.PLDAccountant() if pld else dp_accounting.rdp.RdpAccountant()
    with quiet_absl():
        acc.compose(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
        return acc.get_epsilon(delta)


@pytest.mark.parametrize(("sigma", "q", "steps", "delta"), CASES)
def test_rdp_epsilon_matches_dp_accounting_and_opacus_within_one_percent(sigma, q, steps, delta):
    # Prepare
    ours = Accountant("rdp")
    opacus = RDPAccountant()
    # Execute
    ours.step(sigma, q, steps)
    opacus.history = [(sigma, q, steps)]
    # Assert
    eps = ours.epsilon(delta)
    assert eps == pytest.approx(_direct(sigma, q, steps, delta), rel=1e-12)
    assert eps == pytest.approx(opacus.get_epsilon(delta), rel=0.01)


def test_reproduces_the_published_reference_value():
    # RDP, sigma = 1.5, q = 0.04, 2,250 steps, delta = 1e-5 -> 7.3291 (Opacus' own tests)
    acc = Accountant("rdp")
    acc.step(1.5, 0.04, 2250)
    assert acc.epsilon(1e-5) == pytest.approx(7.3291, abs=5e-4)


def test_pld_matches_dp_accounting_and_is_tighter_than_rdp():
    acc = Accountant("pld")
    acc.step(1.0, 0.2, 10)
    eps = acc.epsilon(1e-5)
    assert eps == pytest.approx(4.984, abs=2e-3)  # dp-accounting 0.6.0, computed directly
    assert eps < _direct(1.0, 0.2, 10, 1e-5)
    coarse = Accountant("pld", pld_discretization=1e-2)
    coarse.step(2.0, 0.05, 30)
    direct = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-2)
    direct.compose(
        dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(2.0)), 30
    )
    assert coarse.epsilon(1e-5) == pytest.approx(direct.get_epsilon(1e-5), rel=1e-12)


def test_fixed_size_sampling_is_replace_one_with_half_the_multiplier():
    # Prepare: 10 of 50 clients, replace-one adjacency, a clipped sum moves by 2C
    acc = Accountant("rdp", "fixed", population=50)
    acc.step(1.0, 0.2, 20)
    direct = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    event = dp_accounting.SampledWithoutReplacementDpEvent(
        50, 10, dp_accounting.GaussianDpEvent(0.5)
    )
    # Execute
    with quiet_absl():
        direct.compose(event, 20)
        expected = direct.get_epsilon(1e-5)
    # Assert
    assert acc.epsilon(1e-5) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ["rdp", "pld"])
def test_a_ledger_reloaded_after_a_kill_gives_the_same_epsilon_sequence(name):
    # Prepare: rounds whose sigma varies (e.g. distributed noise with dropouts)
    sigmas = [2.0, 2.0, 1.6, 2.0, 1.8, 2.0]
    kw = {"pld_discretization": 1e-2} if name == "pld" else {}
    whole = Accountant(name, **kw)
    first = Accountant(name, **kw)
    # Execute: one accountant runs through; the other is killed after round 3
    expected = []
    for s in sigmas:
        whole.step(s, 0.05)
        expected.append(whole.epsilon(1e-5))
    got = []
    for s in sigmas[:3]:
        first.step(s, 0.05)
        got.append(first.epsilon(1e-5))
    saved = json.loads(json.dumps(first.state_dict()))
    resumed = Accountant(name, **kw)
    resumed.load_state_dict(saved)
    for s in sigmas[3:]:
        resumed.step(s, 0.05)
        got.append(resumed.epsilon(1e-5))
    # Assert
    assert got == expected
    assert all(a < b for a, b in itertools.pairwise(expected))


def test_epsilon_after_does_not_change_the_ledger():
    acc = Accountant("rdp")
    acc.step(1.0, 0.1)
    peek = acc.epsilon_after(1.0, 0.1, 1e-5)
    assert len(acc.ledger) == 1 and peek > acc.epsilon(1e-5)
    acc.step(1.0, 0.1)
    assert acc.epsilon(1e-5) == peek
    assert Accountant().epsilon(1e-5) == 0.0


@settings(max_examples=8, deadline=None)
@given(
    target=st.floats(0.3, 30.0),
    q=st.floats(0.005, 1.0),
    rounds=st.integers(1, 500),
    delta=st.sampled_from([1e-5, 1e-6, 1e-3]),
)
def test_calibration_never_overshoots_the_target(target, q, rounds, delta):
    # a coarse tolerance keeps the search short; the bound holds at any tolerance
    sigma = calibrate_noise(target, delta, q, rounds, rtol=0.05)
    acc = Accountant("rdp")
    acc.step(sigma, q, rounds)
    assert acc.epsilon(delta) <= target


def test_calibration_is_tight():
    sigma = calibrate_noise(3.0, 1e-5, 0.1, 50)
    acc = Accountant()
    assert acc.epsilon_after(sigma, 0.1, 1e-5, 50) <= 3.0
    assert acc.epsilon_after(sigma / 1.001, 0.1, 1e-5, 50) > 3.0


def test_calibration_with_fixed_size_sampling_stays_within_the_target():
    sigma = calibrate_noise(3.0, 1e-5, 0.1, 50, sampling="fixed", population=100, rtol=0.05)
    assert Accountant("rdp", "fixed", 100).epsilon_after(sigma, 0.1, 1e-5, 50) <= 3.0


def test_refusals_name_the_setting():
    with pytest.raises(ConfigError, match=r"privacy.accountant: 'moments' is not one of rdp, pld"):
        Accountant("moments")
    with pytest.raises(ConfigError, match=r"privacy.sampling: 'shuffle' is not one of"):
        Accountant("rdp", "shuffle")
    with pytest.raises(ConfigError, match=r"needs the population size"):
        Accountant("rdp", "fixed")
    with pytest.raises(ConfigError, match=r"supports only privacy.sampling='poisson'"):
        Accountant("pld", "fixed", population=10)
    with pytest.raises(ValueError, match=r"not a whole cohort"):
        Accountant("rdp", "fixed", population=10).step(1.0, 0.15)
    with pytest.raises(ValueError, match=r"noise_multiplier must be > 0"):
        Accountant().step(0.0, 0.1)
    with pytest.raises(ValueError, match=r"delta must be in"):
        Accountant().epsilon(1.0)
    with pytest.raises(ConfigError, match=r"target_epsilon must be > 0"):
        calibrate_noise(0.0, 1e-5, 0.1, 10)
    with pytest.raises(ValueError, match=r"written with sampling='fixed'"):
        Accountant().load_state_dict(Accountant("rdp", "fixed", 10).state_dict())
