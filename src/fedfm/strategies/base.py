"""The `Strategy` interface, the `Aggregate` between its two halves, and client sampling.

A strategy is pure: no I/O, no transport. `configure` decides who trains with what settings;
`reduce` turns the validated updates (sorted by client id) into an `Aggregate`; the pipeline's
server hooks may transform that aggregate (unmask a secure sum, add central DP noise); then
`apply` takes the server step. A strategy whose `reduction` is `"sum"` can work from the
weighted mean alone, so it also runs where the server never sees an individual update
(secure aggregation, an all-reduce across ranks); `"individual"` strategies (median, Krum,
LoRA-exact...) must see each update. Round-to-round state (server optimiser moments, control
variates) is exposed through `state_dict` / `load_state_dict` for checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from fedfm.errors import AggregationError, NotEnoughClientsError
from fedfm.messages import FitResult, FitTask
from fedfm.state import State, apply_update, weighted_mean

Reduction = Literal["sum", "individual"]


@dataclass(frozen=True)
class Aggregate:
    """What `reduce` hands to `apply` (through the pipeline's server hooks).

    Attributes:
        update: the aggregated update Δ (for `"sum"` strategies: the example-weighted mean).
        extras: aggregated extras by name (for `"sum"` strategies: plain means).
        num_clients: how many updates went in.
        total_weight: the sum of their `num_examples`.
        client_ids: which clients, sorted.
        state: set by strategies whose reduction yields the next global state itself
            (LoRA-exact, HetLoRA, FlexLoRA); `apply` then returns it.
    """

    update: State
    extras: Mapping[str, State] = field(default_factory=dict)
    num_clients: int = 0
    total_weight: float = 0.0
    client_ids: tuple[int, ...] = ()
    state: State | None = None


class Strategy(Protocol):
    """Decides who trains with what, and how updates become the next global state.

    Attributes:
        name: the registry name.
        reduction: `"sum"` if `reduce` needs only the weighted mean, else `"individual"`.
        reply_extras: names of the extras every reply must carry (and no others).
    """

    name: str
    reduction: Reduction
    reply_extras: frozenset[str]

    def initialize(self, global_state: State) -> State:
        """Called once before the first round; returns the state the loop holds."""
        ...

    def configure(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitTask]:
        """Pick this round's clients and their settings."""
        ...

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Combine the results (sorted by client id) into an aggregate.

        Raises:
            AggregationError: the results cannot be combined (e.g. too few for Krum).
        """
        ...

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """The server step: the next global state from the aggregate."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Round-to-round state: tensors and JSON-able scalars."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...


def weighted_average(results: Sequence[FitResult]) -> Aggregate:
    """The `"sum"` reduction: example-weighted mean of the updates, plain mean of each extra.

    Raises:
        AggregationError: no results.
    """
    if not results:
        raise AggregationError("no updates to aggregate")
    weights = [r.num_examples for r in results]
    update = weighted_mean([r.update for r in results], weights)
    extras = {
        name: weighted_mean([r.extras[name] for r in results], [1.0] * len(results))
        for name in results[0].extras
    }
    return Aggregate(
        update,
        extras,
        num_clients=len(results),
        total_weight=float(sum(weights)),
        client_ids=tuple(r.client_id for r in results),
    )


def aggregate(
    strategy: Strategy, server_round: int, global_state: State, results: Sequence[FitResult]
) -> State:
    """`apply(reduce(...))` without pipeline hooks, results sorted by client id (tests, tools)."""
    ordered = sorted(results, key=lambda r: r.client_id)
    return strategy.apply(
        server_round, global_state, strategy.reduce(server_round, global_state, ordered)
    )


class ClientSampler:
    """Samples clients uniformly without replacement: a count or a fraction, with a minimum.

    With `poisson=True` each client is instead included independently with probability
    q = (that count) / (available clients), the sampling that client-level DP accounting with
    `PoissonSampledDpEvent` assumes; the cohort size then varies, and may be zero.

    Args:
        clients_per_round: how many clients per round (wins over `fraction` when both set).
        fraction: share of the available clients per round (rounded up).
        min_clients: the fewest clients a round may run with.
        poisson: Poisson sampling with the expected count above.
    """

    def __init__(
        self,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        min_clients: int = 1,
        poisson: bool = False,
    ) -> None:
        if clients_per_round is None and fraction is None:
            raise ValueError("set clients_per_round or fraction")
        self.clients_per_round = clients_per_round
        self.fraction = fraction
        self.min_clients = min_clients
        self.poisson = poisson

    def num_to_sample(self, num_available: int) -> int:
        """How many clients a round samples from `num_available`."""
        if self.clients_per_round is not None:
            n = self.clients_per_round
        else:
            assert self.fraction is not None
            n = math.ceil(self.fraction * num_available)
        n = max(n, self.min_clients)
        if n > num_available:
            raise NotEnoughClientsError(
                f"a round needs {n} clients (strategy.clients_per_round / fraction / "
                f"min_clients) but only {num_available} exist (partition.num_clients)"
            )
        return n

    def sample(self, available: Sequence[int], rng: np.random.Generator) -> list[int]:
        """Draw this round's clients, sorted by id."""
        n = self.num_to_sample(len(available))
        if self.poisson:
            keep = rng.random(len(available)) < n / len(available)
            return sorted(int(c) for c, k in zip(available, keep, strict=True) if k)
        picked = rng.choice(np.asarray(available), size=n, replace=False)
        return sorted(int(c) for c in picked)


class StrategyBase:
    """FedAvg's shape: sampling, identical tasks, weighted-mean reduce, `server_lr` step.

    Args:
        sampler: who trains each round.
        server_lr: step size on the aggregated update.
    """

    name = "base"
    reduction: Reduction = "sum"
    reply_extras: frozenset[str] = frozenset()

    def __init__(self, sampler: ClientSampler, server_lr: float = 1.0) -> None:
        self.sampler = sampler
        self.server_lr = server_lr

    def initialize(self, global_state: State) -> State:
        """Nothing to set up by default."""
        return global_state

    def configure(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitTask]:
        """Sample clients; each gets the global state and no overrides."""
        return [FitTask(c, server_round) for c in self.sampler.sample(available, rng)]

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Example-weighted mean of the updates (and plain means of the extras)."""
        return weighted_average(results)

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """`global + server_lr * update`."""
        return apply_update(global_state, aggregate.update, self.server_lr)

    def state_dict(self) -> dict[str, Any]:
        """Stateless by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless by default."""
        del state


class StrategyWrapper:
    """A strategy that runs `inner` and changes one step of it (subclasses override it).

    Every method delegates to `inner`: selection, instructions, the server step and the
    round-to-round state all belong to it.

    Args:
        inner: any strategy.
    """

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.name = inner.name
        self.reduction: Reduction = inner.reduction
        self.reply_extras = inner.reply_extras

    def initialize(self, global_state: State) -> State:
        """Delegate to `inner` (it may want the initial state, see lora.HetLoRA)."""
        return self.inner.initialize(global_state)

    def configure(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitTask]:
        """Delegate to `inner`."""
        return self.inner.configure(server_round, available, rng)

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Delegate to `inner`."""
        return self.inner.reduce(server_round, global_state, results)

    def apply(self, server_round: int, global_state: State, aggregate: Aggregate) -> State:
        """Delegate to `inner`."""
        return self.inner.apply(server_round, global_state, aggregate)

    def state_dict(self) -> dict[str, Any]:
        """`inner`'s state."""
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `inner`'s state."""
        self.inner.load_state_dict(state)


class UniformWeights(StrategyWrapper):
    """Run `inner` as if every client had one example: each update weighs the same.

    Client-level DP (McMahan et al. 2018) bounds each client's influence on the mean to C/n;
    example weights would let a client with many examples move it further, so private runs
    weigh clients uniformly. Everything but the weights belongs to `inner`.

    Args:
        inner: any strategy.
    """

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """`inner`'s reduce of the results with `num_examples` = 1 each."""
        ones = [dataclasses.replace(r, num_examples=1) for r in results]
        return self.inner.reduce(server_round, global_state, ones)
