"""How a round's updates reach the strategy: in the clear, or as a secure sum (SecAgg+).

The loop picks one of two `RoundSteps` once (`round_steps`) and calls the same members every
round. `PlainRound` is what a round always did: every asked client trains and the strategy
reduces the validated updates. `SecureRound` runs the uplink's MASK stage around the same
fit (the message flow is in `fedfm.privacy.secagg.stage`):

    open     setup -> advertise keys -> share keys -> routed shares: three round trips
             through `backend.exchange`; a client that drops out does not train (its
             failure reply says why), and fewer than t clients leave nobody to train
    fit      the ordinary `backend.fit`: the stage's `encode` masks each update
    validate the Validator checks each masked payload against the wire layout only
    reduce   instead of `strategy.reduce`: the server sums the masked vectors, asks the
             survivors for the shares that remove the masks (one more exchange), and
             decodes the `Aggregate`; too few answers raise `NotEnoughSurvivorsError`, an
             `AggregationError`, so the round fails and the global state is kept

Every exchanged message is counted into the round's `bytes_up` / `bytes_down` (the lengths
of the encoded messages). The update norm is unknown under secure aggregation (`None`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from fedfm.backends.base import Backend
from fedfm.errors import AggregationError, ConfigError
from fedfm.messages import Failure, FitReply, FitResult, FitTask
from fedfm.pipeline import MaskStage, Pipeline, mask_stage
from fedfm.state import State, global_norm
from fedfm.strategies.base import Aggregate, Strategy


class RoundSteps(Protocol):
    """The parts of a round that differ between plain and secure aggregation.

    Attributes:
        masked: payloads are masked (the Validator checks their wire layout only).
        bytes_up: bytes the clients sent outside `fit` this round (protocol messages).
        bytes_down: bytes the server sent outside the broadcast this round.
    """

    masked: bool
    bytes_up: int
    bytes_down: int

    def open(
        self, server_round: int, tasks: Sequence[FitTask], global_state: State
    ) -> tuple[list[FitTask], list[FitReply]]:
        """Before training: the tasks to train, and a failure reply for each dropped client."""
        ...

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """The validated results (sorted by client id) -> the aggregate.

        Raises:
            AggregationError: the round fails; the loop keeps the global state.
        """
        ...

    def update_norm(self, results: Sequence[FitResult]) -> float | None:
        """The median L2 norm of the accepted updates, if the server can know it."""
        ...


class PlainRound:
    """Every asked client trains; the strategy reduces the updates it sees.

    Args:
        strategy: the server half of the algorithm.
    """

    masked = False
    bytes_up = bytes_down = 0

    def __init__(self, strategy: Strategy) -> None:
        self.strategy = strategy

    def open(
        self, server_round: int, tasks: Sequence[FitTask], global_state: State
    ) -> tuple[list[FitTask], list[FitReply]]:
        """Nothing to set up: every task trains."""
        del server_round, global_state
        return list(tasks), []

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """`strategy.reduce`."""
        return self.strategy.reduce(server_round, global_state, results)

    def update_norm(self, results: Sequence[FitResult]) -> float | None:
        """The median over the results (`None` for a round with none)."""
        if not results:
            return None
        return float(np.median([global_norm(r.update) for r in results]))


class SecureRound:
    """SecAgg+ around the ordinary fit: the server learns only the survivors' sum.

    Args:
        stage: the uplink's MASK stage (the same object encodes on in-process clients).
        backend: carries the protocol messages (`exchange`).
        seed: the run's seed (the round's public protocol parameters derive from it).
    """

    masked = True

    def __init__(self, stage: MaskStage, backend: Backend, seed: int) -> None:
        self.stage = stage
        self.backend = backend
        self.seed = seed
        self.bytes_up = self.bytes_down = 0

    def open(
        self, server_round: int, tasks: Sequence[FitTask], global_state: State
    ) -> tuple[list[FitTask], list[FitReply]]:
        """The key exchange; the clients that completed it train.

        Raises:
            ConfigError: a task starts from its own state (secure sums need one layout).
        """
        self.bytes_up = self.bytes_down = 0
        if not tasks:
            return [], []
        if any(t.state is not None for t in tasks):
            raise ConfigError(
                "secure aggregation needs every client to start from the global state"
            )
        ids = [t.client_id for t in tasks]
        reason = "dropped out of the secure-aggregation key exchange"
        try:
            messages = self.stage.open_round(server_round, ids, global_state, self.seed)
            for _ in range(2):  # keys -> public keys, then sealed shares -> routed shares
                messages = self.stage.server_step(
                    server_round, self._exchange(server_round, messages)
                )
            ready = self._exchange(server_round, messages)  # clients keep their routed shares
        except AggregationError as exc:  # fewer than t clients are left: nobody can mask
            ready, reason = {}, f"secure aggregation could not start: {exc}"
        keyed = [t for t in tasks if t.client_id in ready]
        dropped = [
            FitReply(t.client_id, server_round, 0, failure=Failure("timeout", reason))
            for t in tasks
            if t.client_id not in ready
        ]
        return keyed, dropped

    def reduce(
        self, server_round: int, global_state: State, results: Sequence[FitResult]
    ) -> Aggregate:
        """Sum the masked updates, unmask with the survivors' shares, decode the aggregate.

        Raises:
            NotEnoughSurvivorsError: fewer than t masked inputs or unmask answers.
        """
        requests = self.stage.collect(server_round, {r.client_id: r.update for r in results})
        answers = self._exchange(server_round, requests)
        weights = {r.client_id: r.num_examples for r in results}
        return self.stage.finish(server_round, answers, global_state, weights)

    def update_norm(self, results: Sequence[FitResult]) -> float | None:
        """Unknown: the server holds masked words only."""
        del results
        return None

    def _exchange(self, server_round: int, messages: Mapping[int, bytes]) -> dict[int, bytes]:
        """One round trip through the backend; answers of clients not asked are ignored."""
        self.bytes_down += sum(len(m) for m in messages.values())
        answers = self.backend.exchange(server_round, messages)
        answers = {c: a for c, a in answers.items() if c in messages}
        self.bytes_up += sum(len(a) for a in answers.values())
        return answers


def round_steps(uplink: Pipeline, strategy: Strategy, backend: Backend, seed: int) -> RoundSteps:
    """`SecureRound` when the uplink has a MASK stage, else `PlainRound`."""
    stage = mask_stage(uplink)
    if stage is None:
        return PlainRound(strategy)
    return SecureRound(stage, backend, seed)
