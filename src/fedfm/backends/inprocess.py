"""In-process backend: a loop over one `ClientRuntime` (one model in memory).

Memory does not grow with the number of clients: each client's work is load state -> train
-> diff -> encode inside the runtime, and only the encoded bytes are kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType

from fedfm.backends.base import OnResult
from fedfm.client.runtime import ClientRuntime
from fedfm.messages import EvalReply, EvalTask, FitReply, FitTask
from fedfm.pipeline import Broadcast
from fedfm.state import State


class InProcessBackend:
    """Simulates every client in this process, one after another.

    Args:
        runtime: the client program.
    """

    def __init__(self, runtime: ClientRuntime) -> None:
        self.runtime = runtime

    def __enter__(self) -> InProcessBackend:
        """Nothing to start."""
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Nothing to release."""

    def fit(
        self,
        broadcast: Broadcast,
        tasks: Sequence[FitTask],
        on_result: OnResult | None = None,
    ) -> list[FitReply]:
        """Train the asked clients one after another."""
        replies = []
        for task in tasks:
            reply = self.runtime.fit(task, broadcast.state)
            replies.append(reply)
            if on_result is not None:
                on_result(reply)
        return replies

    def evaluate(self, state: State, tasks: Sequence[EvalTask]) -> list[EvalReply]:
        """Evaluate `state` on each asked client."""
        return [self.runtime.evaluate(task, state) for task in tasks]

    def exchange(self, server_round: int, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """Each client's answer to its secure-aggregation message, in client order."""
        replies = {}
        for client_id, data in sorted(messages.items()):
            reply = self.runtime.secagg_step(client_id, server_round, data)
            if reply is not None:
                replies[client_id] = reply
        return replies
