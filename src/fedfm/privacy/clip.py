"""Update clipping: scale each client's update to an L2 norm of at most `clip_norm`.

The building block of client-level DP (McMahan et al. 2018, https://arxiv.org/abs/1710.06963)
and a cheap guard against exploding updates. Identity on the server.
"""

from __future__ import annotations

from fedfm.errors import ConfigError
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.state import State, clip_to_norm


class ClipNorm(StageBase):
    """Scale the whole update by min(1, clip_norm / ||update||).

    Metrics: `norm` (before clipping) and `clipped` (1 when it was scaled down).

    Args:
        clip_norm: the bound, > 0.
    """

    name = "clip"
    kind = StageKind.CLIP

    def __init__(self, clip_norm: float) -> None:
        if clip_norm <= 0:
            raise ConfigError(f"pipeline clip: clip_norm must be > 0, got {clip_norm}")
        self.clip_norm = clip_norm

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Clip to `clip_norm`."""
        clipped, norm = clip_to_norm(update, self.clip_norm)
        return clipped, {"norm": norm, "clipped": float(norm > self.clip_norm)}
