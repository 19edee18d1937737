"""`topk` and `randk`: send a fraction of each tensor's entries as (values, int32 indices).

Top-k keeps the largest magnitudes; what it drops is not lost with error feedback: the
client keeps the residual (what it meant to send minus what it sent) in its
`ClientStateStore` under `ef.<stream>` and adds it to its next update, so over rounds
everything is sent (Stich et al. 2018, https://arxiv.org/abs/1809.07599; Seide et al. 2014,
1-bit SGD). The store is checkpointed in simulation and a directory on a deployed client.
Error feedback covers the sparsifier only: a quantiser after it adds unbiased rounding
noise that is not fed back. Random-k draws the kept entries from (seed, round, client,
stream); `unbiased` scales them by n/k so the decoded update is unbiased, which rules out
error feedback (scaled random-k is not contractive, residuals would grow).

Each tensor keeps k = round(fraction * n) entries (at least one), so k is known from the
shapes alone. On the wire a whole update is `<name>/values` (one float dtype for all
tensors) and `<name>/indices` (int32, strictly increasing within each tensor), plus any
non-floating tensors unchanged.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

import torch

from fedfm.compression import wire
from fedfm.errors import ConfigError, TransportError
from fedfm.pipeline import StageBase, StageContext, StageKind
from fedfm.state import State, global_norm

_KEY_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


def keep_count(numel: int, fraction: float) -> int:
    """Entries kept of a tensor of `numel`: round(fraction * numel), at least one."""
    return 0 if numel == 0 else min(numel, max(1, round(fraction * numel)))


def residual_key(stream: str) -> str:
    """The client-store key of a stream's error-feedback residual."""
    return "ef." + _KEY_CHARS.sub("_", stream)


def _value_dtype(like: Mapping[str, torch.Tensor], names: list[str]) -> torch.dtype:
    """One dtype for every tensor's values: their common promotion (float32 when none)."""
    dtypes = [like[k].dtype for k in names] or [torch.float32]
    return functools.reduce(torch.promote_types, dtypes)


class _Sparsify(StageBase):
    """Shared by top-k and random-k: selection differs, everything else is the same.

    Metrics: `ratio`, `rel_error` (of what this round compressed: the update plus the
    residual under error feedback) and, with error feedback, `residual_norm`.
    """

    kind = StageKind.COMPRESS
    name = "sparsify"

    def __init__(self, fraction: float, error_feedback: bool) -> None:
        if not 0 < fraction <= 1:
            raise ConfigError(f"pipeline {self.name}.fraction: must be in (0, 1], got {fraction}")
        self.fraction = fraction
        self.error_feedback = error_feedback
        self.values_key, self.indices_key = f"{self.name}/values", f"{self.name}/indices"

    def select(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """Indices (int64) of the `k` entries of the flat `x` to send."""
        raise NotImplementedError

    def rescale(self, numel: int, k: int) -> float:
        """Factor applied to the kept values."""
        del numel, k
        return 1.0

    def wire_like(self, like: Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
        """Non-floating tensors, then the kept values and their indices."""
        names = wire.floating(like)
        kept = sum(keep_count(like[k].numel(), self.fraction) for k in names)
        return {
            **wire.others(like),
            self.values_key: wire.meta([kept], _value_dtype(like, names)),
            self.indices_key: wire.meta([kept], torch.int32),
        }

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Add the residual, keep k entries per tensor, store the new residual."""
        wire.reserved(update, [self.values_key, self.indices_key], self.name)
        names = wire.floating(update)
        x = {k: update[k] for k in names}
        key = residual_key(ctx.stream)
        if self.error_feedback:
            if ctx.store is None:
                raise ValueError(f"{self.name}: error feedback needs a client state store")
            residual = ctx.store.get(ctx.client_id, key)
            if residual is not None and _matches(residual, x):
                x = {k: v + residual[k].to(v.dtype) for k, v in x.items()}
        gen = wire.generator(ctx, self.name)
        dtype = _value_dtype(update, names)
        values, indices, sent = [], [], {}
        for k in names:
            flat = x[k].reshape(-1)
            n = flat.numel()
            idx = self.select(flat, keep_count(n, self.fraction), gen).sort().values
            kept = flat[idx] * self.rescale(n, idx.numel())
            dense = torch.zeros_like(flat)
            dense[idx] = kept
            sent[k] = dense.reshape(x[k].shape)
            values.append(kept.to(dtype))
            indices.append(idx.to(torch.int32))
        passed = wire.others(update)
        out = {
            **passed,
            self.values_key: torch.cat(values) if values else torch.zeros(0, dtype=dtype),
            self.indices_key: torch.cat(indices) if indices else torch.zeros(0, dtype=torch.int32),
        }
        stats = wire.metrics({**passed, **x}, {**passed, **sent}, out)
        if self.error_feedback and ctx.store is not None:
            new_residual = {k: x[k] - sent[k] for k in names}  # exactly 0 where an entry was sent
            ctx.store.put(ctx.client_id, key, new_residual)
            stats["residual_norm"] = global_norm(new_residual)
        return out, stats

    def decode(self, update: State, like: Mapping[str, torch.Tensor], ctx: StageContext) -> State:
        """Scatter the values back into zero tensors shaped like `like`.

        Raises:
            TransportError: wrong names, dtypes or lengths, or indices of a tensor that are
                out of range or not strictly increasing.
        """
        who = f"{self.name} from client {ctx.client_id} ({ctx.stream})"
        layout = self.wire_like(like)
        wire.check_keys(update, list(layout), who)
        names = wire.floating(like)
        total = layout[self.values_key].numel()
        values = wire.expect(update, self.values_key, layout[self.values_key].dtype, total, who)
        indices = wire.expect(update, self.indices_key, torch.int32, total, who)
        out = {k: v for k, v in update.items() if k not in (self.values_key, self.indices_key)}
        start = 0
        for k in names:
            n = like[k].numel()
            count = keep_count(n, self.fraction)
            idx = indices[start : start + count].long()
            if count and (idx[0] < 0 or idx[-1] >= n or bool((idx.diff() <= 0).any())):
                raise TransportError(
                    f"{who}: indices of {k!r} must be strictly increasing in [0, {n})"
                )
            dense = torch.zeros(n, dtype=like[k].dtype)
            dense[idx] = values[start : start + count].to(like[k].dtype)
            out[k] = dense.reshape(like[k].shape)
            start += count
        return out


def _matches(residual: State, x: Mapping[str, torch.Tensor]) -> bool:
    """A stored residual is used only when it has the update's names and shapes."""
    return residual.keys() == x.keys() and all(residual[k].shape == x[k].shape for k in x)


class TopK(_Sparsify):
    """Keep the `fraction` largest-magnitude entries of each tensor, with error feedback.

    Args:
        fraction: share of entries kept per tensor, in (0, 1].
        error_feedback: keep the unsent residual in the client's store and resend it.
    """

    name = "topk"

    def __init__(self, fraction: float = 0.1, error_feedback: bool = True) -> None:
        super().__init__(fraction, error_feedback)

    def select(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """The `k` largest magnitudes."""
        del gen
        return torch.topk(x.abs(), k, sorted=False).indices


class RandK(_Sparsify):
    """Keep a seeded random `fraction` of each tensor's entries.

    Args:
        fraction: share of entries kept per tensor, in (0, 1].
        error_feedback: keep the unsent residual (only with `unbiased=False`).
        unbiased: scale the kept values by n/k (≈ 1/fraction), so E[decoded] = update.

    Raises:
        ConfigError: `unbiased` together with `error_feedback`.
    """

    name = "randk"

    def __init__(
        self, fraction: float = 0.1, error_feedback: bool = False, unbiased: bool = True
    ) -> None:
        if unbiased and error_feedback:
            raise ConfigError(
                "pipeline randk: unbiased = true and error_feedback = true cannot be combined"
            )
        super().__init__(fraction, error_feedback)
        self.unbiased = unbiased

    def select(self, x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
        """`k` distinct positions drawn uniformly."""
        return torch.randperm(x.numel(), generator=gen)[:k]

    def rescale(self, numel: int, k: int) -> float:
        """n/k when unbiased, else 1."""
        return numel / k if self.unbiased and k else 1.0
