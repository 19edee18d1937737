"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean, Krum, norm bounding.

- Median and trimmed mean: Yin et al. 2018, https://arxiv.org/abs/1803.01498
- Krum and Multi-Krum: Blanchard et al. 2017, https://arxiv.org/abs/1703.02757
- Norm bounding: Sun et al. 2019, https://arxiv.org/abs/1911.07963

The pure functions take a list of update States, flatten them once into a matrix of shape
[n_clients, n_params] and reduce over the client axis. Robust rules ignore `num_examples`:
a malicious client could claim any number, so every client counts once. Ties are broken by
the values themselves, never by position, so the result does not depend on client order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch

from fedfm.errors import AggregationError
from fedfm.messages import FitResult
from fedfm.state import State, clip_to_norm
from fedfm.strategies.base import (
    Aggregate,
    ClientSampler,
    Reduction,
    Strategy,
    StrategyBase,
    StrategyWrapper,
)

Spec = list[tuple[str, torch.Size, torch.dtype]]


def flatten_states(states: Sequence[State]) -> tuple[torch.Tensor, Spec]:
    """Stack States into one matrix.

    Args:
        states: at least one State; all with the same keys, shapes and dtypes.

    Returns:
        The matrix [n_clients, n_params] (float32, or float64 if any input is float64) and
        the spec (name, shape, dtype per key) that `unflatten` needs.

    Raises:
        ValueError: no states, or states that do not match the first one.
    """
    if not states:
        raise ValueError("robust aggregation needs at least one update")
    first = states[0]
    spec: Spec = [(k, v.shape, v.dtype) for k, v in first.items()]
    dtype = torch.float32
    for _, _, dt in spec:
        dtype = torch.promote_types(dtype, dt)
    rows = []
    for i, s in enumerate(states):
        if s.keys() != first.keys() or any(s[k].shape != shape for k, shape, _ in spec):
            raise ValueError(f"update {i} has different keys or shapes than update 0")
        rows.append(torch.cat([s[k].reshape(-1).to(dtype) for k, _, _ in spec]))
    return torch.stack(rows), spec


def unflatten(vector: torch.Tensor, spec: Spec) -> State:
    """Cut a flat vector back into a State following `spec` (inverse of `flatten_states`)."""
    out: State = {}
    offset = 0
    for key, shape, dtype in spec:
        n = shape.numel()
        out[key] = vector[offset : offset + n].reshape(shape).to(dtype).clone()
        offset += n
    return out


def median(updates: Sequence[State]) -> State:
    """Coordinate-wise median (the mean of the two middle values when n is even).

    Args:
        updates: client updates with identical keys and shapes.

    Returns:
        The coordinate-wise median as a State.
    """
    x, spec = flatten_states(updates)
    n = x.shape[0]
    s = torch.sort(x, dim=0).values  # [n_clients, n_params], each column ascending
    # The two middle rows coincide when n is odd; (x + x) / 2 == x exactly in float64.
    mid = (s[(n - 1) // 2].double() + s[n // 2].double()) / 2
    return unflatten(mid, spec)


def trimmed_mean(updates: Sequence[State], beta: float) -> State:
    """Coordinate-wise β-trimmed mean: drop the ⌊β n⌋ largest and smallest values, average.

    Args:
        updates: client updates with identical keys and shapes.
        beta: the share trimmed from each end, 0 ≤ beta < 0.5.

    Returns:
        The trimmed mean as a State.

    Raises:
        ValueError: beta outside [0, 0.5).
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trimmed_mean needs 0 <= beta < 0.5, got {beta}")
    x, spec = flatten_states(updates)
    n = x.shape[0]
    k = int(np.floor(beta * n))
    kept = torch.sort(x, dim=0).values[k : n - k]  # [n - 2k, n_params]
    return unflatten(kept.double().mean(dim=0), spec)


def _check_krum(n: int, f: int) -> None:
    if f < 0:
        raise ValueError(f"the number of Byzantine clients f must be >= 0, got {f}")
    # Blanchard et al. 2017, Proposition 1: Krum is Byzantine-resilient when 2f + 2 < n.
    if n <= 2 * f + 2:
        raise AggregationError(
            f"Krum with f={f} Byzantine clients needs n > 2f + 2 = {2 * f + 2} updates "
            f"(Blanchard et al. 2017), got n={n}: lower num_byzantine or sample more clients"
        )


def _pairwise_sq_distances(x: torch.Tensor) -> torch.Tensor:
    # One pair at a time (not the ||a||²+||b||²-2ab trick): exact up to rounding, and each
    # entry depends only on the two rows, so the matrix permutes with the clients.
    n = x.shape[0]
    d = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            d[i, j] = d[j, i] = (x[i].double() - x[j].double()).pow(2).sum()
    return d


def _krum_scores_matrix(x: torch.Tensor, f: int) -> torch.Tensor:
    n = x.shape[0]
    _check_krum(n, f)
    d = _pairwise_sq_distances(x)
    k = n - f - 2
    scores = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        others = torch.cat([d[i, :i], d[i, i + 1 :]])
        scores[i] = torch.sort(others).values[:k].sum()
    return scores


def krum_scores(updates: Sequence[State], f: int) -> torch.Tensor:
    """Krum score of each update: the sum of squared distances to its n − f − 2 nearest others.

    Args:
        updates: n client updates.
        f: the number of Byzantine clients tolerated; needs n > 2f + 2.

    Returns:
        A float64 tensor of shape [n].

    Raises:
        ValueError: n ≤ 2f + 2 or f < 0.
    """
    x, _ = flatten_states(updates)
    return _krum_scores_matrix(x, f)


def _select(x: torch.Tensor, f: int, m: int) -> list[int]:
    n = x.shape[0]
    if not 1 <= m <= n:
        raise AggregationError(f"multi-Krum needs 1 <= m <= n={n}, got m={m}")
    scores = _krum_scores_matrix(x, f).tolist()
    # Ties in score are broken by the bytes of the update: order-independent, deterministic.
    keys = [(scores[i], x[i].cpu().numpy().tobytes()) for i in range(n)]
    return sorted(range(n), key=lambda i: keys[i])[:m]


def krum_select(updates: Sequence[State], f: int, m: int = 1) -> list[int]:
    """Indices of the m updates with the lowest Krum scores, best first.

    Args:
        updates: n client updates.
        f: the number of Byzantine clients tolerated; needs n > 2f + 2.
        m: how many to select, 1 ≤ m ≤ n.

    Returns:
        Positions in `updates`.
    """
    x, _ = flatten_states(updates)
    return _select(x, f, m)


def krum(updates: Sequence[State], f: int) -> State:
    """Krum: the single update with the lowest score (Blanchard et al. 2017).

    Raises:
        ValueError: n ≤ 2f + 2 (the paper's condition 2f + 2 < n is not met).
    """
    return multi_krum(updates, f, 1)


def multi_krum(updates: Sequence[State], f: int, m: int) -> State:
    """Multi-Krum: the plain mean of the m updates with the lowest Krum scores.

    Args:
        updates: n client updates.
        f: the number of Byzantine clients tolerated; needs n > 2f + 2.
        m: how many updates to average, 1 ≤ m ≤ n (m = n − f is the usual choice).

    Returns:
        The mean of the selected updates as a State.

    Raises:
        ValueError: n ≤ 2f + 2, or m outside [1, n].
    """
    x, spec = flatten_states(updates)
    chosen = _select(x, f, m)
    return unflatten(x[chosen].double().mean(dim=0), spec)


def clip_update(update: State, max_norm: float) -> State:
    """Scale `update` so that its global L2 norm is at most `max_norm` (see `clip_to_norm`)."""
    return clip_to_norm(update, max_norm)[0]


def _individual(update: State, results: Sequence[FitResult]) -> Aggregate:
    return Aggregate(
        update,
        num_clients=len(results),
        total_weight=float(sum(r.num_examples for r in results)),
        client_ids=tuple(r.client_id for r in results),
    )


class Median(StrategyBase):
    """Coordinate-wise median of the updates (Yin et al. 2018, https://arxiv.org/abs/1803.01498).

    Args:
        sampler: who trains each round.
        server_lr: step size on the aggregated update.
    """

    name = "median"
    reduction: Reduction = "individual"

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """The coordinate-wise median of the updates."""
        return _individual(median([r.update for r in results]), results)


class TrimmedMean(StrategyBase):
    """Coordinate-wise trimmed mean (Yin et al. 2018, https://arxiv.org/abs/1803.01498).

    Args:
        sampler: who trains each round.
        beta: share trimmed from each end per coordinate, 0 ≤ beta < 0.5.
        server_lr: step size on the aggregated update.
    """

    name = "trimmed-mean"
    reduction: Reduction = "individual"

    def __init__(self, sampler: ClientSampler, beta: float = 0.1, server_lr: float = 1.0) -> None:
        super().__init__(sampler, server_lr)
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"trimmed_mean.beta must lie in [0, 0.5), got {beta}")
        self.beta = beta

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """The coordinate-wise trimmed mean of the updates."""
        return _individual(trimmed_mean([r.update for r in results], self.beta), results)


class MultiKrum(StrategyBase):
    """Multi-Krum (Blanchard et al. 2017, https://arxiv.org/abs/1703.02757).

    Needs more than 2f + 2 clients per round (the paper's condition).

    Args:
        sampler: who trains each round.
        num_byzantine: f, the number of Byzantine clients tolerated per round.
        num_selected: m, how many lowest-score updates to average; `None` means n − f.
        server_lr: step size on the aggregated update.
    """

    name = "multi-krum"
    reduction: Reduction = "individual"

    def __init__(
        self,
        sampler: ClientSampler,
        num_byzantine: int = 1,
        num_selected: int | None = None,
        server_lr: float = 1.0,
    ) -> None:
        super().__init__(sampler, server_lr)
        if num_byzantine < 0:
            raise ValueError(f"num_byzantine must be >= 0, got {num_byzantine}")
        if num_selected is not None and num_selected < 1:
            raise ValueError(f"num_selected must be >= 1, got {num_selected}")
        self.num_byzantine = num_byzantine
        self.num_selected = num_selected

    def _m(self, n: int) -> int:
        return n - self.num_byzantine if self.num_selected is None else self.num_selected

    def check_round_size(self, n: int) -> None:
        """Refuse a round size this rule can never aggregate (n ≤ 2f + 2, or m > n).

        Raises:
            AggregationError: naming the numbers.
        """
        _check_krum(n, self.num_byzantine)
        if not 1 <= self._m(n) <= n:
            raise AggregationError(f"multi-Krum needs 1 <= m <= n={n}, got m={self._m(n)}")

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """The plain mean of the m best-scored updates.

        Raises:
            AggregationError: too few updates this round (failures can push n ≤ 2f + 2).
        """
        updates = [r.update for r in results]
        self.check_round_size(len(updates))
        delta = multi_krum(updates, self.num_byzantine, self._m(len(updates)))
        return _individual(delta, results)


class Krum(MultiKrum):
    """Krum: keep the single best-scored update (https://arxiv.org/abs/1703.02757).

    Args:
        sampler: who trains each round.
        num_byzantine: f; needs more than 2f + 2 clients per round.
        server_lr: step size on the selected update.
    """

    name = "krum"

    def __init__(
        self, sampler: ClientSampler, num_byzantine: int = 1, server_lr: float = 1.0
    ) -> None:
        super().__init__(sampler, num_byzantine=num_byzantine, num_selected=1, server_lr=server_lr)


class NormBound(StrategyWrapper):
    """Clip each update's global L2 norm to `max_norm` on the server, then run `inner`.

    A defence against boosted (model-replacement) updates, Sun et al. 2019,
    https://arxiv.org/abs/1911.07963. Client selection, per-client instructions and
    round-to-round state all belong to `inner`.

    Args:
        inner: any strategy.
        max_norm: the bound on each update's L2 norm, > 0.
    """

    def __init__(self, inner: Strategy, max_norm: float) -> None:
        if max_norm <= 0:
            raise ValueError(f"norm_bound.max_norm must be > 0, got {max_norm}")
        super().__init__(inner)
        self.max_norm = max_norm
        self.name = f"normbound+{inner.name}"
        self.reduction = "individual"

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Clip every update to `max_norm`, then reduce with `inner`."""
        clipped = [
            dataclasses.replace(r, update=clip_update(r.update, self.max_norm)) for r in results
        ]
        return self.inner.reduce(server_round, global_state, clipped)
