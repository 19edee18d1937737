"""The `Backend` interface: moves tasks to clients and replies back, and nothing else.

The round loop does not know which backend runs: in-process (a loop over one
`ClientRuntime`), torch.distributed, Ray or gRPC all take `FitTask`s / `EvalTask`s and return
`FitReply`s / `EvalReply`s, with failures as values, never as exceptions that kill a round.
Secure aggregation adds `exchange`: protocol messages as bytes, one per client, and the
answers of the clients that answered (a missing answer is a dropout).
A backend is a context manager, so processes, actors and servers are released on error too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Protocol

from fedfm.messages import EvalReply, EvalTask, FitReply, FitTask
from fedfm.pipeline import Broadcast
from fedfm.state import State

OnResult = Callable[[FitReply], None]


class Backend(Protocol):
    """Runs client work."""

    def __enter__(self) -> Backend:
        """Start workers (processes, actors, servers)."""
        ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release them, also on error."""
        ...

    def fit(
        self,
        broadcast: Broadcast,
        tasks: Sequence[FitTask],
        on_result: OnResult | None = None,
    ) -> list[FitReply]:
        """Train every asked client from the broadcast (or its own start state)."""
        ...

    def evaluate(self, state: State, tasks: Sequence[EvalTask]) -> list[EvalReply]:
        """Evaluate `state` on each asked client's local test split."""
        ...

    def exchange(self, server_round: int, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Deliver one secure-aggregation message to each client (`ClientRuntime.secagg_step`)
        and return the answers; a client that fails or does not answer is left out."""
        ...
