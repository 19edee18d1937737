"""The update pipeline: client-side `encode` steps with their server-side inverses.

Everything between the client's optimiser and the server's strategy goes through here
(clipping, DP noise, compression, secure-aggregation masking, transport precision): each is
an `UpdateTransform`, and a `Pipeline` runs them in order, serialises with safetensors, and
on the server parses untrusted bytes, runs the inverses in reverse order and checks the result
against the expected names, shapes and dtypes.

Invalid orders are refused when the pipeline is built: a transform's `stage` may never
decrease along the pipeline (clip < noise < compress < mask), e.g. sparsification after
secure-aggregation masking would destroy the masks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from fedfm.errors import ConfigError
from fedfm.state import State, from_bytes, global_norm, shaped_like, to_bytes

STAGES = ("clip", "noise", "compress", "mask")


@dataclass(frozen=True)
class TransformContext:
    """Who is encoding or decoding: lets transforms derive per-client randomness."""

    client_id: int
    server_round: int
    seed: int


class UpdateTransform(Protocol):
    """One step of the client-side pipeline and its server-side inverse."""

    name: str
    stage: str  # one of STAGES

    def encode(self, update: State, ctx: TransformContext) -> State:
        """Client side: transform the update before it is sent."""
        ...

    def decode(self, update: State, ctx: TransformContext) -> State:
        """Server side: undo what `encode` did that the server can undo."""
        ...


class ClipNorm:
    """Scale the whole update down to L2 norm at most `clip_norm` (identity on the server).

    The building block of client-level DP (McMahan et al. 2018,
    https://arxiv.org/abs/1710.06963) and a cheap guard against exploding updates.
    """

    name = "clip"
    stage = "clip"

    def __init__(self, clip_norm: float) -> None:
        if clip_norm <= 0:
            raise ConfigError(f"pipeline.clip_norm must be > 0, got {clip_norm}")
        self.clip_norm = clip_norm

    def encode(self, update: State, ctx: TransformContext) -> State:
        """Scale by min(1, clip_norm / ||update||)."""
        norm = global_norm(update)
        if norm <= self.clip_norm:
            return update
        factor = self.clip_norm / norm
        return {k: v * factor for k, v in update.items()}

    def decode(self, update: State, ctx: TransformContext) -> State:
        """Clipping cannot be undone and need not be."""
        return update


class Float16:
    """Send float tensors as float16 (half the bytes); the server casts back to float32."""

    name = "fp16"
    stage = "compress"

    def encode(self, update: State, ctx: TransformContext) -> State:
        """Cast floating tensors to float16."""
        return {k: v.half() if v.is_floating_point() else v for k, v in update.items()}

    def decode(self, update: State, ctx: TransformContext) -> State:
        """Cast float16 tensors back to float32."""
        return {k: v.float() if v.dtype == torch.float16 else v for k, v in update.items()}


class Pipeline:
    """An ordered list of transforms plus safetensors (de)serialisation.

    Args:
        transforms: applied in this order on the client, in reverse on the server.
        seed: the run's seed, passed to transforms through `TransformContext`.
        max_bytes: largest payload the server accepts.

    Raises:
        ConfigError: the order is invalid (a stage comes after a later stage).
    """

    def __init__(
        self, transforms: Sequence[UpdateTransform] = (), seed: int = 0, max_bytes: int = 2**28
    ) -> None:
        ranks = []
        for t in transforms:
            if t.stage not in STAGES:
                raise ConfigError(f"pipeline: transform {t.name!r} has unknown stage {t.stage!r}")
            ranks.append(STAGES.index(t.stage))
        for i in range(1, len(ranks)):
            if ranks[i] < ranks[i - 1]:
                a, b = transforms[i - 1], transforms[i]
                raise ConfigError(
                    f"pipeline.transforms: {b.name!r} ({b.stage}) cannot come after "
                    f"{a.name!r} ({a.stage}); valid stage order: {' < '.join(STAGES)}"
                )
        self.transforms = list(transforms)
        self.seed = seed
        self.max_bytes = max_bytes

    def encode(self, update: State, client_id: int, server_round: int) -> bytes:
        """Client side: run every transform, then serialise."""
        ctx = TransformContext(client_id, server_round, self.seed)
        for t in self.transforms:
            update = t.encode(update, ctx)
        return to_bytes(update)

    def decode(
        self, payload: bytes, like: Mapping[str, torch.Tensor], client_id: int, server_round: int
    ) -> State:
        """Server side: parse untrusted bytes, run the inverses, check against `like`.

        Raises:
            TransportError: oversized, unparsable, non-finite, or not shaped like `like`.
        """
        update = from_bytes(payload, max_bytes=self.max_bytes)
        ctx = TransformContext(client_id, server_round, self.seed)
        for t in reversed(self.transforms):
            update = t.decode(update, ctx)
        return shaped_like(update, like, who=f"client {client_id} update")


TRANSFORMS = ("clip", "fp16")


def build_pipeline(names: Sequence[str], clip_norm: float, seed: int) -> Pipeline:
    """Build a pipeline from config names (`TRANSFORMS`)."""
    made: list[UpdateTransform] = []
    for name in names:
        if name == "clip":
            made.append(ClipNorm(clip_norm))
        elif name == "fp16":
            made.append(Float16())
        else:
            raise ConfigError(
                f"pipeline.transforms: {name!r} is not one of {', '.join(TRANSFORMS)}"
            )
    return Pipeline(made, seed=seed)
