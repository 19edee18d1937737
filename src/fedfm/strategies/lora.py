"""LoRA-aware strategies: exact (SVD) aggregation, FFA-LoRA, HetLoRA and FlexLoRA.

The maths is in `lora_math.py`. These strategies aggregate client
*states*, not updates: a client's new state is the state it was sent plus its update, because
the product B·A of averaged factors is not the average of the products.

- `ExactLoRA`: mean of B_i A_i, re-factorised by truncated SVD at the common rank.
- `FFALoRA`: Sun et al. 2024, https://arxiv.org/abs/2403.12313 (A frozen, only B trains).
- `HetLoRA`: Cho et al. 2024, https://arxiv.org/abs/2401.06432 (zero-pad, average, truncate).
- `FlexLoRA`: Bai et al. 2024, https://arxiv.org/abs/2402.11505 (average full B·A, SVD to
  each client's rank).

HetLoRA and FlexLoRA send each client a state of its own rank through `FitTask.state`, so
they keep the global state themselves: call `initialize(global_state)` once before the first
round (it returns the state the round loop should hold). Their `state_dict` carries it.
The client halves live here too: `FreezeA` (FFA-LoRA) and `RankAdapter` (HetLoRA, FlexLoRA).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from fedfm.client.hooks import FitContext, HookBase
from fedfm.messages import FitResult, FitTask
from fedfm.state import State, add, clone, subtract, weighted_mean
from fedfm.strategies.base import Aggregate, ClientSampler, Reduction, StrategyBase
from fedfm.strategies.lora_math import (
    exact_aggregate,
    ffa_trainable_keys,
    from_products,
    frozen_keys,
    lora_ranks,
    non_lora_mean,
    pad_rank,
    product_mean,
    truncate_rank,
)

_PRODUCTS = "flexlora.products"  # FlexLoRA's reduce -> apply: W per module (float64)


def _state_aggregate(
    global_state: State, new_state: State, results: Sequence[FitResult], **extras: State
) -> Aggregate:
    """An aggregate carrying the next global state itself (and its difference as update)."""
    return Aggregate(
        subtract(new_state, global_state) if new_state.keys() == global_state.keys() else {},
        dict(extras),
        num_clients=len(results),
        total_weight=float(sum(r.num_examples for r in results)),
        client_ids=tuple(r.client_id for r in results),
        state=new_state,
    )


class ExactLoRA(StrategyBase):
    """Average the products B_i A_i and re-factorise at the common rank by truncated SVD.

    Every client has the same rank. B·A of the new global equals the example-weighted mean
    of the clients' B_i A_i whenever that mean has rank ≤ r, and is otherwise its best
    rank-r approximation. This is FlexLoRA's server step at homogeneous rank
    (https://arxiv.org/abs/2402.11505). Non-LoRA keys are example-weighted means.

    Args:
        sampler: who trains each round.
    """

    name = "exact"
    reduction: Reduction = "individual"

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Client states = global + update; the next global is their `exact_aggregate`."""
        states = [add(global_state, r.update) for r in results]
        new = exact_aggregate(states, [r.num_examples for r in results])
        return _state_aggregate(global_state, new, results)

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """The state `reduce` computed."""
        assert aggregate.state is not None
        return aggregate.state


class FFALoRA(StrategyBase):
    """FFA-LoRA: A stays at its random initialisation, only B (and non-LoRA keys) train.

    Sun et al. 2024, https://arxiv.org/abs/2403.12313. With a shared frozen A,
    mean(B_i)·A = mean(B_i·A), so plain averaging of B is exact, and only B travels: half the
    LoRA bytes. The client must freeze the keys of `frozen_keys(state)`
    (`requires_grad=False`). If A is frozen before the trainable State is built, A is simply
    not in the State (every party must then build the same A from the same seed); if A is
    in the State, its entries in updates are ignored (missing is fine; a warning if not zero)
    and the global A is returned unchanged.

    Args:
        sampler: who trains each round.
        server_lr: step size on the averaged update of the trainable keys.
    """

    name = "ffa-lora"

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Example-weighted mean of the updates of B and non-LoRA keys (A's are ignored)."""
        trainable = ffa_trainable_keys(global_state)
        frozen = frozen_keys(global_state)
        moved = [
            r.client_id
            for r in results
            if any(k in r.update and bool(r.update[k].any()) for k in frozen)
        ]
        if moved:
            warnings.warn(
                f"FFA-LoRA: clients {moved} changed the frozen lora_A factors; the changes are "
                "ignored. Freeze fedfm.strategies.lora_math.frozen_keys(state) on the client.",
                stacklevel=2,
            )
        weights = [r.num_examples for r in results]
        delta = weighted_mean([{k: r.update[k] for k in trainable} for r in results], weights)
        return Aggregate(
            delta,
            num_clients=len(results),
            total_weight=float(sum(weights)),
            client_ids=tuple(r.client_id for r in results),
        )

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Step B and non-LoRA keys by `server_lr`; A is returned unchanged."""
        delta = aggregate.update
        return {
            k: v + self.server_lr * delta[k].to(v.dtype) if k in delta else v.clone()
            for k, v in global_state.items()
        }


class FreezeA(HookBase):
    """FFA-LoRA's client half: A stays at its seeded initialisation and never travels."""

    def setup(self, module: torch.nn.Module) -> None:
        """Set `requires_grad=False` on every lora_A factor before the state is read."""
        params = dict(module.named_parameters())
        for name in frozen_keys(params):
            params[name].requires_grad_(False)


class _RankedLoRA(StrategyBase):
    """Shared parts of HetLoRA and FlexLoRA: per-client ranks and a kept global state."""

    reduction: Reduction = "individual"

    def __init__(self, sampler: ClientSampler, ranks: Mapping[int, int] | Sequence[int]) -> None:
        super().__init__(sampler)
        values = list(ranks.values()) if isinstance(ranks, Mapping) else list(ranks)
        if not values or any(int(r) < 1 for r in values):
            raise ValueError(f"ranks must be positive integers, one per client, got {ranks!r}")
        self.ranks = ranks
        self.max_rank = max(int(r) for r in values)
        self.global_: State | None = None
        self._cache: dict[int, State] = {}  # rank -> the state a client of that rank gets

    def client_rank(self, client_id: int) -> int:
        """The LoRA rank of `client_id`."""
        try:
            return int(self.ranks[client_id])
        except (KeyError, IndexError):
            raise ValueError(f"no LoRA rank configured for client {client_id}") from None

    def initialize(self, global_state: State) -> State:
        """Keep the initial global state (LoRA at one rank ≥ every client's) and return it.

        Raises:
            ValueError: the global state has no LoRA modules, mixed ranks, or a rank below
                the largest client rank.
        """
        got = set(lora_ranks(global_state).values())
        if len(got) != 1 or got.pop() < self.max_rank:
            raise ValueError(
                f"{self.name} needs the global LoRA state at one rank >= the largest client "
                f"rank {self.max_rank}, got ranks {sorted(set(lora_ranks(global_state).values()))}"
            )
        self.global_ = clone(global_state)
        self._cache = {}
        return global_state

    def _global_rank(self) -> int:
        assert self.global_ is not None
        return next(iter(lora_ranks(self.global_).values()))

    def _start_state(self, rank: int) -> State:
        raise NotImplementedError

    def client_state(self, client_id: int) -> State:
        """The state `client_id` starts from this round, at its own rank (do not mutate)."""
        if self.global_ is None:
            raise RuntimeError(f"call {type(self).__name__}.initialize(global_state) first")
        rank = self.client_rank(client_id)
        if rank not in self._cache:
            self._cache[rank] = self._start_state(rank)
        return self._cache[rank]

    def configure(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitTask]:
        """Sample clients; each gets the global state cut to its own rank."""
        return [
            FitTask(c, server_round, state=self.client_state(c))
            for c in self.sampler.sample(available, rng)
        ]

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Keep the state `reduce` computed as the new global state."""
        assert aggregate.state is not None
        self.global_ = aggregate.state
        self._cache = {}
        return clone(aggregate.state)

    def _client_states(
        self, global_state: State, results: Sequence[FitResult]
    ) -> tuple[list[State], list[float]]:
        if self.global_ is None:
            self.initialize(global_state)
        states = []
        for r in results:
            start = self.client_state(r.client_id)
            for k, v in start.items():
                if k not in r.update or r.update[k].shape != v.shape:
                    got = tuple(r.update[k].shape) if k in r.update else "missing"
                    raise ValueError(
                        f"client {r.client_id} (rank {self.client_rank(r.client_id)}) sent "
                        f"{k!r} with shape {got}, expected {tuple(v.shape)}"
                    )
            states.append(add(start, r.update))
        return states, [float(r.num_examples) for r in results]

    def state_dict(self) -> dict[str, Any]:
        """The kept global state as `"global/<name>"` tensors, and its key order as a list
        under `"global_keys"` (safetensors files do not keep the order)."""
        if self.global_ is None:
            return {}
        out: dict[str, Any] = {f"global/{k}": v.clone() for k, v in self.global_.items()}
        out["global_keys"] = list(self.global_)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        kept = {k[len("global/") :]: v.clone() for k, v in state.items() if k.startswith("global/")}
        order = list(state.get("global_keys", kept))
        if set(order) != set(kept):
            raise ValueError(f"{self.name} state: global_keys do not match the global tensors")
        self.global_ = {k: kept[k] for k in order} or None
        self._cache = {}


class HetLoRA(_RankedLoRA):
    """HetLoRA: heterogeneous ranks by zero-padding (Cho et al. 2024, arXiv:2401.06432).

    Client i gets the global state truncated to its rank r_i (`truncate_rank`); its new
    state is zero-padded to r_max (`pad_rank`) and the padded states are averaged by
    examples. Deviations from the paper: no rank self-pruning on the client, and the
    aggregation weights are `num_examples`, not the paper's sparsity weights (∝ ‖B_i A_i‖_F).

    Args:
        sampler: who trains each round.
        ranks: client id -> LoRA rank, as a mapping or a sequence indexed by client id.
            The global state's rank must be ≥ every client's.
    """

    name = "hetlora"

    def _start_state(self, rank: int) -> State:
        assert self.global_ is not None
        return truncate_rank(self.global_, rank)

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Pad each client's new state to the global rank and take the weighted mean."""
        states, weights = self._client_states(global_state, results)
        r_max = self._global_rank()
        new = weighted_mean([pad_rank(s, r_max) for s in states], weights)
        return _state_aggregate(global_state, new, results)


class FlexLoRA(_RankedLoRA):
    """FlexLoRA: average the full products, SVD to each client's rank (arXiv:2402.11505).

    Bai et al. 2024, https://arxiv.org/abs/2402.11505. The server keeps W = Σ w_i B_i A_i /
    Σ w_i per module (full [out, in] matrices, the strategy's state) and sends client i the
    rank-r_i truncated SVD of W (B = U√S, A = √S Vᵀ). In the first round, before any W
    exists, clients get the initial global state truncated to their rank (random A, zero B),
    as fresh LoRA modules. The returned global state holds W's rank-r_max factors (for
    evaluation); non-LoRA keys are example-weighted means.

    Args:
        sampler: who trains each round.
        ranks: client id -> LoRA rank, as a mapping or a sequence indexed by client id.
            The global state's rank must be ≥ every client's.
    """

    name = "flexlora"

    def __init__(self, sampler: ClientSampler, ranks: Mapping[int, int] | Sequence[int]) -> None:
        super().__init__(sampler, ranks)
        self.products_: dict[str, torch.Tensor] | None = None

    def initialize(self, global_state: State) -> State:
        """Keep the initial global state; forget any aggregated products."""
        self.products_ = None
        return super().initialize(global_state)

    def _start_state(self, rank: int) -> State:
        assert self.global_ is not None
        if self.products_ is None:
            return truncate_rank(self.global_, rank)
        return from_products(self.global_, self.products_, rank)

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Average the clients' full B·A; the next global state is W's rank-r_max factors."""
        states, weights = self._client_states(global_state, results)
        assert self.global_ is not None
        products = product_mean(states, weights)
        template = {**self.global_, **non_lora_mean(states, weights)}
        new = from_products(template, products, self._global_rank())
        return _state_aggregate(global_state, new, results, **{_PRODUCTS: products})

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Keep W and its rank-r_max factors."""
        self.products_ = dict(aggregate.extras[_PRODUCTS])
        return super().apply(server_round, global_state, aggregate)

    def state_dict(self) -> dict[str, Any]:
        """The kept global state (`"global/<name>"`) and W (`"product/<module>"`, float64)."""
        out = super().state_dict()
        for prefix, w in (self.products_ or {}).items():
            out[f"product/{prefix}"] = w.clone()
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        super().load_state_dict(state)
        products = {
            k[len("product/") :]: v.clone() for k, v in state.items() if k.startswith("product/")
        }
        self.products_ = products or None


class RankAdapter(HookBase):
    """HetLoRA/FlexLoRA's client half: train a lower-rank state inside the max-rank model.

    The client's state is zero-padded to the model's rank before training (the padded
    slots get zero gradients and stay zero) and cut back to its own rank afterwards.
    """

    def __init__(self) -> None:
        self.model_rank = 0

    def setup(self, module: torch.nn.Module) -> None:
        """Read the model's LoRA rank."""
        trainable = {n: p for n, p in module.named_parameters() if p.requires_grad}
        self.model_rank = _rank(trainable, default=0)

    def before_train(self, ctx: FitContext) -> None:
        """Zero-pad the client's state to the model's rank."""
        if _rank(ctx.start, self.model_rank) < self.model_rank:
            ctx.model_start = pad_rank(ctx.start, self.model_rank)

    def after_train(self, ctx: FitContext) -> None:
        """Cut the trained state back to the client's rank."""
        rank = _rank(ctx.start, self.model_rank)
        if rank < self.model_rank:
            ctx.end = truncate_rank(ctx.end, rank)


def _rank(state: Mapping[str, torch.Tensor], default: int) -> int:
    """The LoRA rank of a state; `default` when no A factor is in it."""
    if not frozen_keys(state):
        return default
    return min(lora_ranks(dict(state)).values())
