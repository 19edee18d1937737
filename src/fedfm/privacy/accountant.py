"""Privacy accounting: Google's dp-accounting (RDP or PLD) behind a small `Accountant`.

The accountant keeps a ledger, the list of `(noise_multiplier, sample_rate, steps)` events in
the order they happened, and computes ε from the ledger alone, so a ledger reloaded after a
kill gives the same ε after every later round, bit for bit. Two ways of sampling are stated:

- `"poisson"`: each client (or record) takes part independently with probability q
  (`PoissonSampledDpEvent`, add-or-remove-one adjacency); RDP or PLD.
- `"fixed"`: a fixed-size cohort of m = q·N drawn without replacement from N
  (`SampledWithoutReplacementDpEvent`, Wang et al. 2019, https://arxiv.org/abs/1808.00087).
  Its analysis is for replace-one adjacency (N is public), under which a clipped sum moves
  by up to 2C, so the Gaussian event gets σ/2; dp-accounting 0.6 leaves that halving to the
  caller. RDP only: dp-accounting's PLD accountant has no such event.

`calibrate_noise` finds the smallest σ (to a relative tolerance) whose ε for the planned
rounds stays within a target, by bisection over verified bounds: it never overshoots.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

from fedfm.errors import ConfigError

AccountantName = Literal["rdp", "pld"]
Sampling = Literal["poisson", "fixed"]
ACCOUNTANTS: tuple[str, ...] = get_args(AccountantName)
SAMPLINGS: tuple[str, ...] = get_args(Sampling)


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """Silence absl's warnings for the duration (dp-accounting's RDP floods them at large q:
    orders whose series does not converge are skipped, which is expected)."""
    from absl import logging as absl_logging

    level = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(level)


@dataclass(frozen=True)
class LedgerEntry:
    """One accounting event: `steps` releases with noise multiplier σ at sampling rate q."""

    noise_multiplier: float
    sample_rate: float
    steps: int


class Accountant:
    """(ε, δ) of a sequence of subsampled Gaussian releases, from dp-accounting.

    Args:
        name: `"rdp"` (Rényi DP, Mironov 2017) or `"pld"` (privacy loss distributions,
            tighter, slower).
        sampling: `"poisson"` or `"fixed"` (see the module docstring).
        population: N, the number of clients (or records) sampled from; required for
            `"fixed"`.
        pld_discretization: PLD's value discretisation interval (smaller: tighter, slower).

    Raises:
        ConfigError: an unknown name or sampling, `"fixed"` without a population, or PLD with
            fixed-size sampling.
    """

    def __init__(
        self,
        name: str = "rdp",
        sampling: str = "poisson",
        population: int | None = None,
        pld_discretization: float = 1e-4,
    ) -> None:
        if name not in ACCOUNTANTS:
            raise ConfigError(
                f"privacy.accountant: {name!r} is not one of {', '.join(ACCOUNTANTS)}"
            )
        if sampling not in SAMPLINGS:
            raise ConfigError(
                f"privacy.sampling: {sampling!r} is not one of {', '.join(SAMPLINGS)}"
            )
        if sampling == "fixed" and (population is None or population < 1):
            raise ConfigError("privacy.sampling='fixed' needs the population size (>= 1)")
        if sampling == "fixed" and name == "pld":
            raise ConfigError(
                "privacy.accountant='pld' supports only privacy.sampling='poisson' "
                "(dp-accounting has no PLD of sampling without replacement); use 'rdp'"
            )
        self.name = name
        self.sampling = sampling
        self.population = population
        self.pld_discretization = pld_discretization
        self.ledger: list[LedgerEntry] = []
        self._cache: dict[tuple[tuple[LedgerEntry, ...], float], float] = {}

    def step(self, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record `steps` releases with noise multiplier σ at sampling rate q.

        Raises:
            ValueError: σ not positive and finite, q outside (0, 1], steps < 1, or (fixed
                sampling) q·N not a whole cohort.
        """
        self.ledger.append(self._entry(noise_multiplier, sample_rate, steps))
        n = len(self.ledger)  # what an earlier prefix of the ledger gave is no longer asked
        self._cache = {k: v for k, v in self._cache.items() if len(k[0]) >= n}

    def epsilon(self, delta: float) -> float:
        """ε at `delta` after every recorded event (0 for an empty ledger)."""
        return self._epsilon(tuple(self.ledger), delta)

    def epsilon_after(
        self, noise_multiplier: float, sample_rate: float, delta: float, steps: int = 1
    ) -> float:
        """ε at `delta` if one more event were recorded (the ledger is not changed)."""
        entry = self._entry(noise_multiplier, sample_rate, steps)
        return self._epsilon((*self.ledger, entry), delta)

    def state_dict(self) -> dict[str, Any]:
        """The ledger and the settings it was computed under (JSON-able)."""
        return {
            "name": self.name,
            "sampling": self.sampling,
            "population": self.population,
            "ledger": [[e.noise_multiplier, e.sample_rate, e.steps] for e in self.ledger],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the ledger of `state_dict`.

        Raises:
            ValueError: the state was written by an accountant with other settings.
        """
        for key in ("name", "sampling", "population"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"accountant ledger was written with {key}={state[key]!r}, "
                    f"this accountant has {getattr(self, key)!r}"
                )
        self.ledger = [
            LedgerEntry(float(s), float(q), int(n)) for s, q, n in state.get("ledger", [])
        ]

    def _entry(self, noise_multiplier: float, sample_rate: float, steps: int) -> LedgerEntry:
        if not (noise_multiplier > 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"noise_multiplier must be > 0 and finite, got {noise_multiplier}")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if self.sampling == "fixed":
            self._cohort(sample_rate)
        return LedgerEntry(float(noise_multiplier), float(sample_rate), int(steps))

    def _cohort(self, sample_rate: float) -> int:
        assert self.population is not None
        size = round(sample_rate * self.population)
        if size < 1 or abs(size - sample_rate * self.population) > 1e-6 * self.population:
            raise ValueError(
                f"fixed-size sampling: sample_rate {sample_rate} x population "
                f"{self.population} is not a whole cohort"
            )
        return size

    def _epsilon(self, ledger: tuple[LedgerEntry, ...], delta: float) -> float:
        if not 0 < delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {delta}")
        if not ledger:
            return 0.0
        key = (ledger, delta)
        if key not in self._cache:
            self._cache[key] = self._compute(ledger, delta)
        return self._cache[key]

    def _compute(self, ledger: Sequence[LedgerEntry], delta: float) -> float:
        import dp_accounting

        accountant: Any
        if self.name == "pld":
            accountant = dp_accounting.pld.PLDAccountant(
                value_discretization_interval=self.pld_discretization
            )
        elif self.sampling == "fixed":
            accountant = dp_accounting.rdp.RdpAccountant(
                neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
            )
        else:
            accountant = dp_accounting.rdp.RdpAccountant()
        # Equal events are composed once with their total count, in first-seen order: the
        # result depends on the ledger only, and a long run costs one composition per kind.
        counts: dict[tuple[float, float], int] = {}
        for e in ledger:
            counts[(e.noise_multiplier, e.sample_rate)] = (
                counts.get((e.noise_multiplier, e.sample_rate), 0) + e.steps
            )
        with quiet_absl():
            for (sigma, q), steps in counts.items():
                accountant.compose(self._event(sigma, q), steps)
            return float(accountant.get_epsilon(delta))

    def _event(self, sigma: float, q: float) -> Any:
        import dp_accounting

        if self.sampling == "fixed":
            assert self.population is not None
            # Replace-one: a clipped sum moves by up to 2C, so the multiplier is σ/2.
            return dp_accounting.SampledWithoutReplacementDpEvent(
                self.population, self._cohort(q), dp_accounting.GaussianDpEvent(sigma / 2)
            )
        return dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))


def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    *,
    accountant: str = "rdp",
    sampling: str = "poisson",
    population: int | None = None,
    rtol: float = 1e-3,
    max_noise_multiplier: float = 1e4,
) -> float:
    """The smallest σ (within `rtol`) whose ε after `rounds` releases is at most the target.

    Every returned value has been checked: ε(σ) ≤ `target_epsilon`. The search doubles an
    upper bound until it meets the target, halves a lower bound until it misses it, then
    bisects geometrically until the bounds are within a factor 1 + `rtol`.

    Args:
        target_epsilon: the budget ε, > 0.
        delta: δ in (0, 1).
        sample_rate: q, the share of clients (or records) per release.
        rounds: the number of releases planned.
        accountant: `"rdp"` or `"pld"`.
        sampling: `"poisson"` or `"fixed"`.
        population: N (for `"fixed"`).
        rtol: relative tolerance on σ.
        max_noise_multiplier: give up above this σ.

    Returns:
        The noise multiplier σ.

    Raises:
        ConfigError: a target ≤ 0, or one that even `max_noise_multiplier` cannot meet.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"privacy.target_epsilon must be > 0, got {target_epsilon}")
    probe = Accountant(accountant, sampling, population)

    def eps(sigma: float) -> float:
        return probe.epsilon_after(sigma, sample_rate, delta, rounds)

    hi = 1.0
    while eps(hi) > target_epsilon:
        if hi >= max_noise_multiplier:
            raise ConfigError(
                f"privacy.target_epsilon={target_epsilon} needs a noise multiplier above "
                f"{max_noise_multiplier} for {rounds} rounds at sampling rate {sample_rate}"
            )
        hi *= 2.0
    lo = hi / 2.0
    while eps(lo) <= target_epsilon:
        hi, lo = lo, lo / 2.0
        if lo < 1e-6:
            return hi
    while hi / lo > 1.0 + rtol:
        mid = math.sqrt(lo * hi)
        if eps(mid) <= target_epsilon:
            hi = mid
        else:
            lo = mid
    return hi
