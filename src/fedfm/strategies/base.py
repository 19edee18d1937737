"""The `Strategy` interface and client sampling shared by all strategies.

A strategy is pure: no I/O, no transport. `configure_fit` decides who trains with what
settings; `aggregate_fit` turns validated updates into the next global state. Round-to-round
state (server optimiser moments, control variates) is exposed through `state_dict` /
`load_state_dict` so that checkpoints can store it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from fedfm.core import FitIns, FitResult
from fedfm.errors import NotEnoughClientsError
from fedfm.state import State


class Strategy(Protocol):
    """Decides who trains with what, and how updates become the next global state."""

    name: str

    def initialize(self, global_state: State) -> State:
        """Called once before the first round; returns the state the loop holds."""
        ...

    def configure_fit(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitIns]:
        """Pick this round's clients and their settings."""
        ...

    def aggregate_fit(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> State:
        """Return the next global state from the successful clients' results."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Round-to-round state: tensors and JSON-able scalars."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""
        ...


class ClientSampler:
    """Samples clients uniformly without replacement: a count or a fraction, with a minimum.

    Args:
        clients_per_round: how many clients per round (wins over `fraction` when both set).
        fraction: share of the available clients per round (rounded up).
        min_clients: the fewest clients a round may run with.
    """

    def __init__(
        self,
        clients_per_round: int | None = None,
        fraction: float | None = None,
        min_clients: int = 1,
    ) -> None:
        if clients_per_round is None and fraction is None:
            raise ValueError("set clients_per_round or fraction")
        self.clients_per_round = clients_per_round
        self.fraction = fraction
        self.min_clients = min_clients

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
        picked = rng.choice(np.asarray(available), size=n, replace=False)
        return sorted(int(c) for c in picked)


class StrategyBase:
    """Sampling, identical instructions for every client, no round-to-round state.

    Args:
        sampler: who trains each round.
        server_lr: step size on the aggregated update (used by strategies that step).
    """

    name = "base"

    def __init__(self, sampler: ClientSampler, server_lr: float = 1.0) -> None:
        self.sampler = sampler
        self.server_lr = server_lr

    def initialize(self, global_state: State) -> State:
        """Nothing to set up by default."""
        return global_state

    def configure_fit(
        self, server_round: int, available: Sequence[int], rng: np.random.Generator
    ) -> list[FitIns]:
        """Sample clients; each gets the global state and no overrides."""
        return [FitIns(c, server_round) for c in self.sampler.sample(available, rng)]

    def state_dict(self) -> dict[str, Any]:
        """Stateless by default."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Stateless by default."""
        del state
