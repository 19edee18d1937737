"""The `Backend` interface: runs client work and returns encoded updates.

The round loop does not know which backend runs: in-process (one model, states swapped in
and out), torch.distributed, Ray or gRPC all take `FitIns` and return `ClientUpdate`s, with
failures as values (`ClientUpdate.error`), never as exceptions that kill a round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from fedfm.core import ClientUpdate, FitIns
from fedfm.state import State

OnResult = Callable[[ClientUpdate], None]


class Backend(Protocol):
    """Runs client work."""

    def fit(
        self,
        global_state: State,
        instructions: Sequence[FitIns],
        on_result: OnResult | None = None,
    ) -> list[ClientUpdate]:
        """Train every instructed client from its starting state; one result per client."""
        ...

    def evaluate_clients(
        self, state: State, client_ids: Sequence[int]
    ) -> dict[int, dict[str, float]]:
        """Evaluate `state` on each client's local test split."""
        ...

    def personalize_clients(
        self, state: State, client_ids: Sequence[int], steps: int, server_round: int
    ) -> dict[int, dict[str, float]]:
        """Fine-tune `state` locally for `steps` steps on each client and evaluate locally."""
        ...

    def close(self) -> None:
        """Release processes, actors or connections."""
        ...
