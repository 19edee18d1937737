"""Adaptive clipping to a quantile of the update norms (Andrew et al. 2021,
https://arxiv.org/abs/1905.03871), and the noise it costs.

Each round every client clips its update to the current bound C and sends, inside the
payload, b_i − 1/2 where b_i = 1 if its norm was at most C (centred, the count's sensitivity
is 1/2). The server sums them, adds N(0, σ_b²), and estimates the unclipped fraction
b̃ = clamp(sum / n + 1/2, 0, 1) with n the expected cohort size; then the geometric step
C ← C·exp(−η (b̃ − γ)) moves C toward the γ-quantile of the norms. The new C reaches the
clients in `FitTask.overrides.clip_norm` (`configure_tasks`).

Privacy (the paper's Theorem 1): releasing the update with noise multiplier σ_Δ and the
count with σ_b is one Gaussian mechanism with z^-2 = σ_Δ^-2 + (2σ_b)^-2; for a target z the
update needs σ_Δ = (z^-2 − (2σ_b)^-2)^-1/2, which exists when σ_b > z/2. The paper suggests
σ_b = n/20. The bit is read on the server from each client's payload (trusted server, central
noise); under secure aggregation it would have to be summed under the mask, which is not
done here.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from fedfm.errors import ConfigError
from fedfm.messages import FitTask
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.state import State, clip_to_norm
from fedfm.strategies.base import Aggregate

UNCLIPPED_KEY = "__dp_unclipped__"  # b_i - 1/2, appended to every stream's payload
COUNT_SALT = 0xAC  # the count's noise draws from (seed, round, 0, salt)


def update_noise_multiplier(
    noise_multiplier: float, count_noise_multiplier: float | None = None, streams: int = 1
) -> float:
    """σ_Δ per clipped vector such that a round's release has effective multiplier z.

    `streams` vectors, each clipped to C with noise σ_Δ·C, and the count with σ_b satisfy
    z^-2 = streams·σ_Δ^-2 + (2σ_b)^-2 (Andrew et al. 2021, Theorem 1, with composition).

    Raises:
        ConfigError: z not positive, or σ_b ≤ z/2 (no σ_Δ reaches z).
    """
    if not noise_multiplier > 0:
        raise ConfigError(f"noise_multiplier must be > 0, got {noise_multiplier}")
    count = 0.0 if count_noise_multiplier is None else (2.0 * count_noise_multiplier) ** -2
    rest = noise_multiplier**-2 - count
    if rest <= 0:
        raise ConfigError(
            f"adaptive-clip count_noise_multiplier must be > noise_multiplier / 2 = "
            f"{noise_multiplier / 2:.4g}, got {count_noise_multiplier}"
        )
    return math.sqrt(streams / rest)


def effective_noise_multiplier(
    update_noise: float, count_noise_multiplier: float | None = None, streams: int = 1
) -> float:
    """z of a release with σ_Δ per vector and σ_b on the count (inverse of the above)."""
    count = 0.0 if count_noise_multiplier is None else (2.0 * count_noise_multiplier) ** -2
    return float((streams * update_noise**-2 + count) ** -0.5)


class AdaptiveClipNorm(StageBase):
    """Clip to a bound that follows the `target_quantile` of the update norms.

    Metrics (client): `norm` before clipping, `clipped` (1 when scaled down). Server metrics:
    `clip_norm` used this round, `unclipped_fraction` (the noised estimate b̃), `next_clip_norm`.

    Args:
        clip_norm: the initial bound C_0 > 0.
        target_quantile: γ in (0, 1), the share of updates left unclipped.
        learning_rate: η > 0 of the geometric step.
        count_noise_multiplier: σ_b > 0, the std of the noise on the count.
        expected_clients: n, the expected cohort size.
        secure: cryptographic noise on the count instead of seeded noise.
        seed: the run's seed (seeded noise).

    Raises:
        ConfigError: a parameter out of range.
    """

    name = "adaptive-clip"
    kind = StageKind.CLIP

    def __init__(
        self,
        clip_norm: float,
        *,
        target_quantile: float = 0.5,
        learning_rate: float = 0.2,
        count_noise_multiplier: float,
        expected_clients: int,
        secure: bool = False,
        seed: int = 0,
    ) -> None:
        checks = {
            "clip_norm > 0": (clip_norm, clip_norm > 0),
            "0 < target_quantile < 1": (target_quantile, 0 < target_quantile < 1),
            "learning_rate > 0": (learning_rate, learning_rate > 0),
            "count_noise_multiplier > 0": (count_noise_multiplier, count_noise_multiplier > 0),
            "expected_clients >= 1": (expected_clients, expected_clients >= 1),
        }
        for rule, (value, ok) in checks.items():
            if not ok:
                raise ConfigError(f"pipeline adaptive-clip: needs {rule}, got {value}")
        self.clip_norm = clip_norm
        self.target_quantile = target_quantile
        self.learning_rate = learning_rate
        self.count_noise_multiplier = count_noise_multiplier
        self.expected_clients = expected_clients
        self.secure = secure
        self.seed = seed
        self._bits: dict[tuple[int, int], float] = {}  # (round, client) -> b_i - 1/2
        self.metrics_: dict[str, float] = {}

    def configure_tasks(self, tasks: Sequence[FitTask], server_round: int) -> list[FitTask]:
        """Tell every client this round's bound (`overrides.clip_norm`)."""
        del server_round
        return [
            dataclasses.replace(
                t, overrides=dataclasses.replace(t.overrides, clip_norm=self.clip_norm)
            )
            for t in tasks
        ]

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Clip to this round's bound and append b_i − 1/2."""
        bound = ctx.clip_norm or self.clip_norm
        clipped, norm = clip_to_norm(update, bound)
        bit = 0.5 if norm <= bound else -0.5
        out = {**clipped, UNCLIPPED_KEY: torch.tensor([bit], dtype=torch.float32)}
        return out, {"norm": norm, "clipped": float(norm > bound)}

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """The input's layout plus one float32 entry for the bit."""
        return {**like, UNCLIPPED_KEY: torch.empty(1, dtype=torch.float32, device="meta")}

    def decode(self, update: State, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Take the bit out (clamped to ±1/2: a client cannot weigh more than one vote)."""
        del like
        out = dict(update)
        bit = out.pop(UNCLIPPED_KEY)
        if ctx.stream == "update":
            value = float(bit.double().clamp(-0.5, 0.5).sum())
            self._bits[(ctx.server_round, ctx.client_id)] = value
        return out

    def server_postprocess(self, aggregate: Aggregate, server_round: int) -> Aggregate:
        """Noise the count of the clients in the aggregate and take the geometric step."""
        from fedfm.privacy.noise import gaussian_like

        total = sum(self._bits.get((server_round, c), 0.0) for c in aggregate.client_ids)
        self._bits = {k: v for k, v in self._bits.items() if k[0] > server_round}
        noise = gaussian_like(
            {"count": torch.empty(1)},
            self.count_noise_multiplier,
            secure=self.secure,
            entropy=(self.seed, server_round, 0, COUNT_SALT),
        )["count"]
        fraction = min(1.0, max(0.0, (total + float(noise)) / self.expected_clients + 0.5))
        used = self.clip_norm
        self.clip_norm = used * math.exp(-self.learning_rate * (fraction - self.target_quantile))
        self.metrics_ = {
            "clip_norm": used,
            "unclipped_fraction": fraction,
            "next_clip_norm": self.clip_norm,
        }
        return aggregate

    def server_metrics(self) -> dict[str, float]:
        """The last round's bound, noised unclipped fraction and next bound."""
        return dict(self.metrics_)

    def state_dict(self) -> dict[str, Any]:
        """The current bound."""
        return {"clip_norm": self.clip_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the bound (an empty state: a fresh run)."""
        if state:
            self.clip_norm = float(state["clip_norm"])
