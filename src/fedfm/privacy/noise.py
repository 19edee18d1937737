"""Gaussian noise for client-level DP-FedAvg (McMahan et al. 2018,
https://arxiv.org/abs/1710.06963), and where its randomness comes from.

`GaussianNoise` is the pipeline's noise stage. It adds N(0, (σ_Δ·C)²) to the *sum* of the
clipped updates, so the mean of n expected clients carries σ_Δ·C/n:

- `central` (trusted server): the server adds it in `server_postprocess`, after the reduce.
- `distributed` (with secure aggregation): each client adds N(0, (σ_Δ·C)²/n) in `encode`;
  the sum of n clients carries the same noise, and the server adds none. If fewer than n
  clients reach the sum, less noise was added, and the round is charged its realised noise.

Either way the server divides the noised sum by n, the expected cohort size, not by the
number of clients that replied (McMahan et al.'s fixed-denominator estimator): the
sensitivity of the mean is then C/n whoever replies. The stage owns the accountant: after
each round's noise it records (σ, q) and reports (ε, δ) in its server metrics; its
`state_dict` holds the ledger, and `stop_reason` stops the run before a round that would
exceed `target_epsilon`.

Randomness. In simulation (`secure=False`) noise comes from a `torch.Generator` seeded from
(seed, round, client, stream), so a run is reproducible. Otherwise (`secure=True`) it comes
from ChaCha20 keyed by 32 fresh bytes of `os.urandom` per call, turned into normals by
Box-Muller in float64: a cryptographic generator whose output cannot be predicted from
earlier output. A `torch.Generator` seeded from `os.urandom` would be about 3x faster, but it
is a Mersenne Twister, whose state can be recovered from 624 consecutive outputs. Neither
guards against floating-point attacks on continuous noise (Mironov 2012); that needs
discrete Gaussians, which are not implemented here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Protocol

import numpy as np
import torch

from fedfm.errors import AggregationError, ConfigError
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.privacy.accountant import Accountant
from fedfm.privacy.adaptive import effective_noise_multiplier, update_noise_multiplier
from fedfm.state import State
from fedfm.strategies.base import Aggregate

NoiseMode = Literal["central", "distributed"]
NOISE_MODES: tuple[str, ...] = ("central", "distributed")
NOISE_SALT = 0xD9  # noise draws from (seed, round, client + 1, stream, salt); the server is 0
_CHUNK = 1 << 20  # normals per ChaCha20 call (bounds the keystream buffer to 8 MiB)


def stream_id(stream: str) -> int:
    """A stable integer for a stream name (`"update"`, an extra's name)."""
    return zlib.crc32(stream.encode())


def seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator seeded from non-negative integers (e.g. seed, round, client)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def secure_normal(n: int) -> np.ndarray:
    """`n` standard normals (float64) from ChaCha20 keyed by `os.urandom`, by Box-Muller.

    Each pair of 64-bit keystream words gives two 53-bit uniforms u1, u2 in (0, 1] and two
    normals sqrt(-2 ln u1)·(cos, sin)(2π u2).
    """
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    out = np.empty(n, dtype=np.float64)
    done = 0
    while done < n:
        pairs = (min(_CHUNK, n - done) + 1) // 2
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
        words = np.frombuffer(cipher.encryptor().update(bytes(16 * pairs)), dtype=np.uint64)
        u = ((words >> np.uint64(11)).astype(np.float64) + 1.0) * 2.0**-53
        radius, angle = np.sqrt(-2.0 * np.log(u[:pairs])), 2.0 * np.pi * u[pairs:]
        z = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)])
        take = min(len(z), n - done)
        out[done : done + take] = z[:take]
        done += take
    return out


def gaussian_like(
    like: Mapping[str, torch.Tensor], std: float, *, secure: bool, entropy: Sequence[int]
) -> State:
    """N(0, std²) noise (float64) shaped like each tensor of `like`, in its key order.

    Args:
        like: the names and shapes to fill.
        std: the standard deviation.
        secure: ChaCha20 from `os.urandom` (not reproducible) instead of a seeded generator.
        entropy: seeds the generator when `secure` is false.
    """
    if secure:
        flat = torch.from_numpy(secure_normal(sum(t.numel() for t in like.values())))
        out, start = {}, 0
        for name, t in like.items():
            out[name] = flat[start : start + t.numel()].reshape(t.shape) * std
            start += t.numel()
        return out
    gen = seeded_generator(*entropy)
    return {
        name: torch.randn(t.shape, generator=gen, dtype=torch.float64) * std
        for name, t in like.items()
    }


class ClipSource(Protocol):
    """The clip stage before the noise: its current bound C."""

    clip_norm: float


class GaussianNoise(StageBase):
    """The DP-FedAvg noise stage (see the module docstring).

    Args:
        clip: the clip stage before this one (its `clip_norm` is read every round).
        noise_multiplier: z, the effective noise multiplier of a round's release (what the
            accountant records when the whole cohort replies).
        mode: `"central"` or `"distributed"`.
        expected_clients: n, the cohort size the noise and the mean are scaled for.
        accountant: records each round.
        sample_rate: q, the share of clients sampled per round.
        delta: δ of the reported ε.
        target_epsilon: if set, `stop_reason` stops the run before it would be exceeded.
        streams: the clipped vectors each client sends (1 + the strategy's extras); they
            compose, so each carries z·sqrt(streams).
        count_noise_multiplier: σ_b of adaptive clipping's count, or `None` (fixed clip).
        secure: cryptographic noise (deployment) instead of seeded noise (simulation).
        seed: the run's seed (seeded noise).

    Raises:
        ConfigError: an unknown mode, non-positive sizes or multipliers, or a count noise too
            small for z (adaptive clipping needs σ_b > z/2).
    """

    name = "noise"
    kind = StageKind.NOISE
    every_round = True  # Poisson sampling's empty cohorts release noise too, and are accounted

    def __init__(
        self,
        clip: ClipSource,
        *,
        noise_multiplier: float,
        mode: str,
        expected_clients: int,
        accountant: Accountant,
        sample_rate: float,
        delta: float,
        target_epsilon: float | None = None,
        streams: int = 1,
        count_noise_multiplier: float | None = None,
        secure: bool = False,
        seed: int = 0,
    ) -> None:
        if mode not in NOISE_MODES:
            raise ConfigError(f"pipeline noise: mode {mode!r} is not one of central, distributed")
        if expected_clients < 1 or streams < 1:
            raise ConfigError("pipeline noise: expected_clients and streams must be >= 1")
        self.clip = clip
        self.mode = mode
        self.expected_clients = expected_clients
        self.accountant = accountant
        self.sample_rate = sample_rate
        self.delta = delta
        self.target_epsilon = target_epsilon
        self.streams = streams
        self.count_noise_multiplier = count_noise_multiplier
        self.secure = secure
        self.seed = seed
        self.noise_multiplier = noise_multiplier
        self.update_noise_multiplier = update_noise_multiplier(
            noise_multiplier, count_noise_multiplier, streams
        )
        self.metrics_: dict[str, float] = {}

    def std(self, clients: int | None = None) -> float:
        """Noise std per stream: σ_Δ·C on the sum (central), σ_Δ·C/sqrt(n) per client
        (distributed); `clients` overrides n."""
        total = self.update_noise_multiplier * self.clip.clip_norm
        if self.mode == "central":
            return total
        return total / math.sqrt(clients or self.expected_clients)

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Distributed mode: add this client's share of the noise; central mode: nothing."""
        if self.mode == "central":
            return update, {}
        std = self.std()
        entropy = (self.seed, ctx.server_round, ctx.client_id + 1, stream_id(ctx.stream))
        noise = gaussian_like(update, std, secure=self.secure, entropy=(*entropy, NOISE_SALT))
        noised = {k: (v.double() + noise[k]).to(v.dtype) for k, v in update.items()}
        return noised, {"std": std}

    def server_postprocess(self, aggregate: Aggregate, server_round: int) -> Aggregate:
        """Noise the sum (central), divide by n, record the round in the accountant.

        Raises:
            AggregationError: the strategy's reduce gave a next state instead of an update.
        """
        if aggregate.state is not None:
            raise AggregationError(
                "pipeline noise needs a strategy whose reduce yields a mean update "
                "(reduction 'sum'), not a next state"
            )
        m, n = aggregate.num_clients, self.expected_clients
        update = self._noised(aggregate.update, m, server_round, "update")
        extras = {k: self._noised(v, m, server_round, k) for k, v in aggregate.extras.items()}
        z = self.noise_multiplier
        # distributed, an empty cohort releases a constant (no share of noise, no data): the
        # planned z is accounted, an overcount that keeps the ledger conservative
        if self.mode == "distributed" and 0 < m < n:  # fewer shares of the noise reached it
            z = effective_noise_multiplier(
                self.update_noise_multiplier * math.sqrt(m / n),
                self.count_noise_multiplier,
                self.streams,
            )
        self.accountant.step(z, self.sample_rate)
        self.metrics_ = {
            "epsilon": self.accountant.epsilon(self.delta),
            "delta": self.delta,
            "noise_multiplier": z,
            "clip_norm": self.clip.clip_norm,
            "secure": float(self.secure),
        }
        return dataclasses.replace(aggregate, update=update, extras=extras)

    def _noised(self, mean: State, m: int, server_round: int, stream: str) -> State:
        """(mean·m + central noise) / n, in float64, back in each tensor's dtype."""
        noise: State = {}
        if self.mode == "central":
            entropy = (self.seed, server_round, 0, stream_id(stream), NOISE_SALT)
            noise = gaussian_like(mean, self.std(), secure=self.secure, entropy=entropy)
        n = self.expected_clients
        return {
            k: ((v.double() * m + noise[k] if noise else v.double() * m) / n).to(v.dtype)
            for k, v in mean.items()
        }

    def stop_reason(self, server_round: int) -> str | None:
        """A one-line reason when the round would take ε above `target_epsilon` (predicted
        with the planned multiplier: a distributed round that loses clients is charged more,
        and the next call then stops the run)."""
        if self.target_epsilon is None:
            return None
        now = self.accountant.epsilon(self.delta)
        after = self.accountant.epsilon_after(self.noise_multiplier, self.sample_rate, self.delta)
        if after <= self.target_epsilon:
            return None
        return (
            f"stopped before round {server_round}: it would take ε from {now:.4g} to "
            f"{after:.4g}, above privacy.target_epsilon = {self.target_epsilon} "
            f"(δ = {self.delta})"
        )

    def server_metrics(self) -> dict[str, float]:
        """The last round's ε, δ, effective noise multiplier, clip norm, and 1 if the noise
        was cryptographic (0: seeded)."""
        return dict(self.metrics_)

    def state_dict(self) -> dict[str, Any]:
        """The ledger and the noise multiplier in force (a resumed run keeps it)."""
        return {
            "accountant": self.accountant.state_dict(),
            "noise_multiplier": self.noise_multiplier,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned (an empty state: a fresh run)."""
        if not state:
            return
        self.accountant.load_state_dict(dict(state["accountant"]))
        self.noise_multiplier = float(state["noise_multiplier"])
        self.update_noise_multiplier = update_noise_multiplier(
            self.noise_multiplier, self.count_noise_multiplier, self.streams
        )
