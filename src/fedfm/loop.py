"""The round loop: one function a newcomer can read top to bottom.

Each round: (1) plan, (2) clients train through the backend, (3) decode and validate the
updates, (4) aggregate, (5) evaluate, (6) checkpoint, (7) callbacks (which may stop the run).
The loop knows nothing of models, transports or privacy: those are the pieces it is given.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedfm.backends.base import Backend
from fedfm.core import ClientUpdate, FitIns, FitResult
from fedfm.errors import NotEnoughClientsError, TransportError
from fedfm.metrics import clean_record
from fedfm.pipeline import Pipeline
from fedfm.state import State, from_bytes, global_norm, to_bytes
from fedfm.strategies.base import Strategy


class Callback(Protocol):
    """Sees each round's metrics record; returning True stops the run after that round."""

    def on_round_end(self, record: dict[str, Any]) -> bool | None:
        """React to the end of a round."""
        ...


class Progress(Protocol):
    """Progress display (rich bars in the CLI; silent in tests)."""

    def round_started(self, server_round: int, num_clients: int) -> None:
        """A round starts training `num_clients` clients."""
        ...

    def client_done(self, update: ClientUpdate) -> None:
        """One client finished (or failed)."""
        ...

    def round_done(self, record: dict[str, Any]) -> None:
        """A round is complete."""
        ...


class SilentProgress:
    """Shows nothing."""

    def round_started(self, server_round: int, num_clients: int) -> None:
        """Nothing."""

    def client_done(self, update: ClientUpdate) -> None:
        """Nothing."""

    def round_done(self, record: dict[str, Any]) -> None:
        """Nothing."""


Evaluator = Callable[[State], dict[str, float]]
Checkpointer = Callable[[int, State, dict[str, Any]], None]


@dataclass
class LoopParts:
    """Everything the loop uses, built by `experiment.build`."""

    strategy: Strategy
    backend: Backend
    pipeline: Pipeline
    client_ids: Sequence[int]
    central_eval: Evaluator
    checkpoint: Checkpointer
    seed: int
    num_rounds: int
    eval_every: int = 1
    federated_eval_every: int | None = None
    min_success_fraction: float = 0.5
    callbacks: list[Callback] = field(default_factory=list)
    progress: Progress = field(default_factory=SilentProgress)


def run_rounds(parts: LoopParts, global_state: State, start_round: int = 0) -> State:
    """Run rounds `start_round + 1 .. num_rounds` and return the final global state.

    Randomness is derived from (seed, round), so a resumed run makes the same choices as an
    uninterrupted one.
    """
    p = parts
    for server_round in range(start_round + 1, p.num_rounds + 1):
        t_round = time.perf_counter()
        # 1. Plan: who trains this round, with which settings.
        rng = np.random.default_rng([p.seed, server_round, 0x5A3D])
        instructions = p.strategy.configure_fit(server_round, p.client_ids, rng)
        p.progress.round_started(server_round, len(instructions))

        # 2. Clients train through the backend (failures come back as values).
        t = time.perf_counter()
        bytes_down = _downlink_bytes(instructions, global_state)
        updates = p.backend.fit(global_state, instructions, p.progress.client_done)
        seconds_fit = time.perf_counter() - t

        # 3. Decode: server-side inverse of the update pipeline; bad payloads are failures.
        t = time.perf_counter()
        results, failures = _decode(p.pipeline, updates, instructions, global_state, server_round)
        needed = max(1, int(np.ceil(p.min_success_fraction * len(instructions))))
        if len(results) < needed:
            raise NotEnoughClientsError(
                f"round {server_round}: {len(results)} of {len(instructions)} clients "
                f"succeeded, {needed} needed (strategy.min_success_fraction); "
                f"failures: {failures[:3]}"
            )

        # 4. Aggregate into the next global state.
        global_state = p.strategy.aggregate_fit(server_round, global_state, results)
        seconds_aggregate = time.perf_counter() - t

        # 5. Evaluate: centrally, and on clients' local test splits every k rounds.
        t = time.perf_counter()
        central: dict[str, Any] = {"accuracy": None, "loss": None}
        if server_round % p.eval_every == 0 or server_round == p.num_rounds:
            central = dict(p.central_eval(global_state))
        federated = _federated_eval(p, global_state, server_round)
        seconds_eval = time.perf_counter() - t

        record = clean_record(
            {
                "round": server_round,
                "accuracy": central.get("accuracy"),
                "loss": central.get("loss"),
                "train_loss": _mean([r.metrics.get("train_loss") for r in results]),
                "update_norm": float(np.median([global_norm(r.update) for r in results])),
                "bytes_up": sum(u.num_bytes for u in updates if not u.has_error()),
                "bytes_down": bytes_down,
                "num_clients": len(instructions),
                "num_failures": len(failures),
                "clients": [ins.client_id for ins in instructions],
                **({"failures": failures} if failures else {}),
                "seconds_fit": seconds_fit,
                "seconds_aggregate": seconds_aggregate,
                "seconds_eval": seconds_eval,
                **federated,
            }
        )

        # 6. Checkpoint (atomic); the record travels with it so a crash loses no metrics.
        t = time.perf_counter()
        record["seconds_checkpoint"] = 0.0
        record["seconds"] = time.perf_counter() - t_round
        p.checkpoint(server_round, global_state, record)
        record["seconds_checkpoint"] = time.perf_counter() - t
        record["seconds"] = time.perf_counter() - t_round

        # 7. Callbacks: metrics log, TensorBoard, early stopping.
        p.progress.round_done(record)
        stop = [cb.on_round_end(record) for cb in p.callbacks]
        if any(stop):
            break
    return global_state


def _decode(
    pipeline: Pipeline,
    updates: Sequence[ClientUpdate],
    instructions: Sequence[FitIns],
    global_state: State,
    server_round: int,
) -> tuple[list[FitResult], list[str]]:
    """Validate and decode each successful update; malformed ones become failures.

    An update must be shaped like the state its client was sent (its own rank under
    HetLoRA/FlexLoRA); extras (e.g. SCAFFOLD control deltas) like the global state.
    """
    sent = {ins.client_id: ins for ins in instructions}
    results: list[FitResult] = []
    failures: list[str] = []
    for u in updates:
        ins = sent.get(u.client_id)
        if ins is None:
            failures.append(f"client {u.client_id}: was not asked to train this round")
            continue
        if u.has_error():
            failures.append(f"client {u.client_id}: {u.error}")
            continue
        like = ins.state if ins.state is not None else global_state
        try:
            update = pipeline.decode(u.payload, like, u.client_id, server_round)
            extra = {k: from_bytes(b, like=global_state) for k, b in u.extras.items()}
        except TransportError as exc:
            failures.append(f"client {u.client_id}: {exc}")
            continue
        results.append(FitResult(u.client_id, u.num_examples, update, extra, u.metrics))
    return results, failures


def _downlink_bytes(instructions: Sequence[FitIns], global_state: State) -> int:
    """Serialised size of what each client receives (each distinct state serialised once)."""
    global_size = len(to_bytes(global_state))
    total = 0
    for ins in instructions:
        total += global_size if ins.state is None else len(to_bytes(ins.state))
        total += sum(len(to_bytes(extra)) for extra in ins.extra.values())
    return total


def _federated_eval(parts: LoopParts, state: State, server_round: int) -> dict[str, Any]:
    """Every client evaluates `state` on its local test split every k rounds."""
    every = parts.federated_eval_every
    if not every or (server_round % every != 0 and server_round != parts.num_rounds):
        return {}
    per_client = parts.backend.evaluate_clients(state, parts.client_ids)
    per_client = {c: m for c, m in per_client.items() if m["num_examples"] > 0}
    return {
        "client_accuracy": {str(c): m["accuracy"] for c, m in per_client.items()},
        "client_num_examples": {str(c): int(m["num_examples"]) for c, m in per_client.items()},
    }


def _mean(values: Sequence[float | None]) -> float | None:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(finite)) if finite else None
