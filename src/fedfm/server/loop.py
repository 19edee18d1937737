"""The round loop: one function a newcomer can read top to bottom.

Each round: (0) stop cleanly if a pipeline stage says so (e.g. a privacy budget) or if the
round's bytes would exceed the communication budget, (1) plan, (2) encode the broadcast once
and let the clients train through the backend, (3) decode and validate the replies (bad ones
become failures), (4) reduce, run the pipeline's server hooks, apply the server step and
check the result is finite, (5) evaluate, (6) checkpoint, (7) callbacks (which may stop the
run). The loop knows nothing of models, transports or privacy: those are the pieces it is
given. With secure aggregation (a MASK stage on the uplink) the steps that differ, a key
exchange before training and unmasking instead of `reduce`, are `fedfm.server.secure`'s.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from fedfm.backends.base import Backend
from fedfm.errors import AggregationError, NotEnoughClientsError
from fedfm.memory import trim, tune_allocator
from fedfm.messages import EvalTask, FitReply, FitResult, FitTask
from fedfm.pipeline import Pipeline, encode_broadcast
from fedfm.records import RoundRecord, mean_metrics
from fedfm.server.replies import Validator
from fedfm.server.secure import round_steps
from fedfm.state import State, all_finite, to_bytes
from fedfm.strategies.base import Aggregate, Strategy

logger = logging.getLogger(__name__)


class Callback(Protocol):
    """Sees each round's record; returning True stops the run after that round."""

    def on_round_end(self, record: RoundRecord) -> bool | None:
        """React to the end of a round."""
        ...


class Progress(Protocol):
    """Progress display (rich bars in the CLI; silent in tests)."""

    def round_started(self, server_round: int, num_clients: int) -> None:
        """A round starts training `num_clients` clients."""
        ...

    def client_done(self, reply: FitReply) -> None:
        """One client finished (or failed)."""
        ...

    def round_done(self, record: RoundRecord) -> None:
        """A round is complete."""
        ...


class SilentProgress:
    """Shows nothing."""

    def round_started(self, server_round: int, num_clients: int) -> None:
        """Nothing."""

    def client_done(self, reply: FitReply) -> None:
        """Nothing."""

    def round_done(self, record: RoundRecord) -> None:
        """Nothing."""


Evaluator = Callable[[State], dict[str, float]]
Checkpointer = Callable[[int, State, RoundRecord], None]


@dataclass
class LoopParts:
    """Everything the loop uses, built by `fedfm.build`."""

    strategy: Strategy
    backend: Backend
    uplink: Pipeline
    downlink: Pipeline
    client_ids: Sequence[int]
    central_eval: Evaluator
    checkpoint: Checkpointer
    seed: int
    num_rounds: int
    eval_every: int = 1
    federated_eval_every: int | None = None
    min_success_fraction: float = 0.5
    max_num_examples: int = 10**9
    evaluate_initial: bool = True
    initial_extra: Callable[[], dict[str, float]] | None = None  # more round-0 figures
    primary_metric: str = "accuracy"
    callbacks: list[Callback] = field(default_factory=list)
    progress: Progress = field(default_factory=SilentProgress)
    max_bytes: int | None = None  # comm.max_bytes: cap on bytes up + down over all rounds
    bytes_spent: int = 0  # bytes up + down of the rounds before `start_round` (resume)
    stopped: str | None = None  # set by the loop: why it stopped before a round


def run_rounds(parts: LoopParts, global_state: State, start_round: int = 0) -> State:
    """Run rounds `start_round + 1 .. num_rounds` and return the final global state.

    Randomness is derived from (seed, round), so a resumed run makes the same choices as an
    uninterrupted one.
    """
    p = parts
    tune_allocator()  # see fedfm.memory: RSS would creep up round after round
    steps = round_steps(p.uplink, p.strategy, p.backend, p.seed)  # plain or secure (SecAgg+)
    validator = Validator(p.uplink, p.strategy.reply_extras, p.max_num_examples, steps.masked)
    if start_round == 0 and p.evaluate_initial:
        _initial_record(p, global_state)
    spent, p.stopped = p.bytes_spent, None
    for server_round in range(start_round + 1, p.num_rounds + 1):
        t_round = time.perf_counter()
        # 0. Budgets: a stage (e.g. a privacy accountant) may stop the run before a round.
        p.stopped = p.uplink.stop_reason(server_round) or p.downlink.stop_reason(server_round)
        if p.stopped is not None:
            break

        # 1. Plan: who trains this round, with which settings.
        rng = np.random.default_rng([p.seed, server_round, 0x5A3D])
        tasks = p.strategy.configure(server_round, p.client_ids, rng)
        tasks = p.uplink.configure_tasks(tasks, server_round)  # e.g. adaptive clip bound

        # 2. Clients train through the backend (failures come back as values), unless the
        #    round's bytes would exceed the communication budget. Under secure aggregation
        #    only the clients that completed the key exchange train.
        t = time.perf_counter()
        broadcast = encode_broadcast(p.downlink, global_state, server_round)
        bytes_down = _downlink_bytes(tasks, len(broadcast.payload))
        p.stopped = _over_budget(p, server_round, tasks, global_state, bytes_down, spent)
        if p.stopped is not None:
            break
        p.progress.round_started(server_round, len(tasks))
        keyed, dropped = steps.open(server_round, tasks, global_state)  # secure: key exchange
        for reply in dropped:
            p.progress.client_done(reply)
        replies = list(dropped)
        if keyed:  # Poisson sampling may draw nobody: see _server_step
            replies += p.backend.fit(broadcast, keyed, p.progress.client_done)
        seconds_fit = time.perf_counter() - t

        # 3. Decode and validate: bad replies become failures; results sorted by client id.
        t = time.perf_counter()
        results, failures = validator.decode(replies, tasks, broadcast.state, server_round)
        needed = max(1, int(np.ceil(p.min_success_fraction * len(tasks))))
        if tasks and len(results) < needed:
            raise NotEnoughClientsError(
                f"round {server_round}: {len(results)} of {len(tasks)} clients "
                f"succeeded, {needed} needed (strategy.min_success_fraction); "
                f"failures: {failures[:3]}"
            )

        # 4. Reduce (secure: unmask the sum) -> pipeline server hooks -> apply; a failed
        #    step keeps the old state.
        global_state, error = _server_step(p, server_round, global_state, results, steps.reduce)
        seconds_aggregate = time.perf_counter() - t

        # 5. Evaluate: centrally, and on clients' local test splits every k rounds.
        t = time.perf_counter()
        central: dict[str, float | None] = {p.primary_metric: None, "loss": None}
        if server_round % p.eval_every == 0 or server_round == p.num_rounds:
            central = dict(p.central_eval(global_state))
            central.pop("num_examples", None)
            trim()  # the evaluation's large batches go back to the OS
        record = RoundRecord(
            round=server_round,
            central=central,
            train_loss=_mean([r.metrics.get("train_loss") for r in results]),
            update_norm=steps.update_norm(results),
            bytes_up=sum(r.num_bytes for r in replies if r.ok) + steps.bytes_up,
            bytes_down=_downlink_bytes(keyed, len(broadcast.payload)) + steps.bytes_down,
            num_clients=len(tasks),
            num_failures=len(failures),
            clients=[task.client_id for task in tasks],
            failures=failures,
            error=error,
            extra={
                **mean_metrics(
                    [r.metrics for r in results], skip=("train_loss", "steps", "num_examples")
                ),
                **{f"downlink/{k}": v for k, v in broadcast.metrics.items()},
                **p.uplink.server_metrics(),  # e.g. noise/epsilon, adaptive-clip/clip_norm
            },
        )
        spent += record.bytes_up + record.bytes_down
        _federated_eval(p, global_state, server_round, record)
        record.seconds_fit, record.seconds_aggregate = seconds_fit, seconds_aggregate
        record.seconds_eval = time.perf_counter() - t

        # 6. Checkpoint (atomic); the record travels with it so a crash loses no metrics.
        t = time.perf_counter()
        record.seconds = time.perf_counter() - t_round
        p.checkpoint(server_round, global_state, record)
        record.seconds_checkpoint = time.perf_counter() - t
        record.seconds = time.perf_counter() - t_round

        # 7. Callbacks: metrics log, TensorBoard, early stopping.
        p.progress.round_done(record)
        stop = [cb.on_round_end(record) for cb in p.callbacks]
        if any(stop):
            break
    if p.stopped is not None:
        logger.warning(p.stopped)
    return global_state


def _initial_record(p: LoopParts, global_state: State) -> None:
    """Round 0: the starting point (the FM before any federated training), evaluated."""
    t = time.perf_counter()
    central: dict[str, float | None] = dict(p.central_eval(global_state))
    central.pop("num_examples", None)
    extra = p.initial_extra() if p.initial_extra is not None else {}  # e.g. zero-shot
    trim()
    seconds = time.perf_counter() - t
    record = RoundRecord(
        round=0, central=central, extra=extra, seconds_eval=seconds, seconds=seconds
    )
    for cb in p.callbacks:
        cb.on_round_end(record)


def _server_step(
    p: LoopParts,
    server_round: int,
    global_state: State,
    results: list[FitResult],
    reduce: Callable[[int, State, Sequence[FitResult]], Aggregate],
) -> tuple[State, str | None]:
    """Reduce, the uplink's server hooks, apply; on failure restore the strategy's state."""
    if not results and not p.uplink.every_round:
        return global_state, None  # nobody sampled, nothing to release: the state is kept
    saved = p.strategy.state_dict()
    try:
        if results:
            aggregate = reduce(server_round, global_state, results)
        else:  # an empty Poisson cohort under DP: its noise is released, as it is accounted
            aggregate = _empty_aggregate(p.strategy, server_round, global_state)
        aggregate = p.uplink.server_postprocess(aggregate, server_round)
        new_state = p.strategy.apply(server_round, global_state, aggregate)
        if not all_finite(new_state):
            raise AggregationError("the new global state holds NaN or infinite values")
    except AggregationError as exc:
        p.strategy.load_state_dict(saved)
        message = f"round {server_round} failed, the global state is kept: {exc}"
        warnings.warn(message, stacklevel=2)
        return global_state, message
    return new_state, None


def _empty_aggregate(strategy: Strategy, server_round: int, global_state: State) -> Aggregate:
    """The aggregate of a round nobody was sampled in: the strategy's own reduce of one zero
    update (so it covers exactly the keys and extras a real round releases), with no client."""
    zeros = {k: torch.zeros_like(v) for k, v in global_state.items()}
    nobody = FitResult(
        client_id=-1,
        num_examples=1,
        update=zeros,
        extras={name: dict(zeros) for name in strategy.reply_extras},
    )
    aggregate = strategy.reduce(server_round, global_state, [nobody])
    return dataclasses.replace(aggregate, num_clients=0, total_weight=0.0, client_ids=())


def _over_budget(
    p: LoopParts,
    server_round: int,
    tasks: Sequence[FitTask],
    global_state: State,
    bytes_down: int,
    spent: int,
) -> str | None:
    """Why round `server_round` may not run under `comm.max_bytes`, or `None`.

    The round's bytes are bounded before any client trains: `bytes_down` is known once the
    broadcast is encoded, and each asked client's upload is the serialised size of its
    update and extras in the uplink's wire layout (exact, since every stage's layout depends
    on shapes only; a failing client only makes the bound loose).
    """
    if p.max_bytes is None:
        return None
    sizes: dict[int, int] = {}

    def size(like: State) -> int:
        if id(like) not in sizes:
            sizes[id(like)] = p.uplink.encoded_size(like)
        return sizes[id(like)]

    extras = len(p.strategy.reply_extras)
    up = sum(
        size(task.state if task.state is not None else global_state) + extras * size(global_state)
        for task in tasks
    )
    if spent + up + bytes_down <= p.max_bytes:
        return None
    return (
        f"stopped before round {server_round}: comm.max_bytes = {p.max_bytes} would be exceeded "
        f"({spent} B spent, the round needs up to {up} B up and {bytes_down} B down)"
    )


def _downlink_bytes(tasks: Sequence[FitTask], broadcast_size: int) -> int:
    """Serialised size of what each client receives (the broadcast is encoded once; a state
    or extra shared by several tasks is measured once)."""
    sizes: dict[int, int] = {}

    def size(state: State) -> int:
        if id(state) not in sizes:
            sizes[id(state)] = len(to_bytes(state))
        return sizes[id(state)]

    total = 0
    for task in tasks:
        total += broadcast_size if task.state is None else size(task.state)
        total += sum(size(extra) for extra in task.extras.values())
    return total


def _federated_eval(parts: LoopParts, state: State, server_round: int, record: RoundRecord) -> None:
    """Every client evaluates `state` on its local test split every k rounds."""
    every = parts.federated_eval_every
    if not every or (server_round % every != 0 and server_round != parts.num_rounds):
        return
    tasks = [EvalTask(c, server_round) for c in parts.client_ids]
    replies = [r for r in parts.backend.evaluate(state, tasks) if r.ok and r.num_examples > 0]
    for reply in replies:
        for metric, value in reply.metrics.items():
            record.client_metrics.setdefault(metric, {})[str(reply.client_id)] = value
    record.client_num_examples = {str(r.client_id): r.num_examples for r in replies}


def _mean(values: Sequence[Any]) -> float | None:
    finite = [v for v in values if isinstance(v, int | float) and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
