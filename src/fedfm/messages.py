"""Typed values that cross the client/server boundary (frozen dataclasses).

`FitTask` goes from the server to one client, `FitReply` comes back (encoded bytes, as it
would cross a network), and `FitResult` is a decoded, validated reply as a strategy sees it.
`EvalTask` / `EvalReply` do the same for evaluation on a client's local test split. Failures
are values (`Failure`) from a closed set of kinds, never exceptions that kill a round.
Strings appear only at the wire and file boundary.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, get_args

from fedfm.state import State

FailureKind = Literal[
    "unknown_client",  # the client id has no data here
    "train_error",  # local training or encoding raised
    "eval_error",  # local evaluation raised
    "bad_payload",  # unparsable, oversized, non-finite, or wrongly shaped bytes
    "bad_num_examples",  # the FedAvg weight is not a positive integer within the cap
    "bad_extras",  # extras missing, unexpected or malformed
    "not_asked",  # a reply from a client that was not asked this round
    "duplicate",  # a second reply from the same client in one round
    "timeout",  # no reply before the deadline (remote backends)
    "refused",  # the client declined the task
]
FAILURE_KINDS: tuple[str, ...] = get_args(FailureKind)


@dataclass(frozen=True)
class Failure:
    """Why a client's work was not used.

    Attributes:
        kind: one of `FAILURE_KINDS`.
        detail: a one-line human-readable reason.
    """

    kind: FailureKind
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass(frozen=True)
class TrainOverrides:
    """Per-round local settings that replace the client config's; `None` keeps the config's.

    Attributes:
        lr: local learning rate.
        epochs: local epochs.
        max_steps: cap on local optimiser steps.
        clip_norm: this round's update clipping bound (adaptive clipping moves it).
    """

    lr: float | None = None
    epochs: int | None = None
    max_steps: int | None = None
    clip_norm: float | None = None


@dataclass(frozen=True)
class FitTask:
    """What one client is asked to do in one round.

    Attributes:
        client_id: which client.
        server_round: the round number, starting at 1.
        overrides: local settings for this round.
        state: a client-specific starting state (HetLoRA/FlexLoRA: the global state cut
            to the client's rank); `None` means the broadcast global state.
        extras: further named States sent down, keyed by the hook that reads them
            (e.g. SCAFFOLD's server control variate).
    """

    client_id: int
    server_round: int
    overrides: TrainOverrides = field(default_factory=TrainOverrides)
    state: State | None = None
    extras: Mapping[str, State] = field(default_factory=dict)


@dataclass(frozen=True)
class FitReply:
    """What a client sends back: the encoded update, or why it failed.

    Attributes:
        client_id: which client.
        server_round: the round the reply answers.
        num_examples: local training examples used (the FedAvg weight).
        payload: the update (new - old trainable state) after the uplink pipeline,
            serialised with safetensors.
        extras: further serialised States (e.g. SCAFFOLD's control delta), also encoded by
            the uplink pipeline.
        metrics: the client's own numbers (`train_loss`, `steps`, stage metrics).
        failure: set when the client failed; then `payload` is empty.
    """

    client_id: int
    server_round: int
    num_examples: int
    payload: bytes = b""
    extras: Mapping[str, bytes] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        """True when the client succeeded."""
        return self.failure is None

    @property
    def num_bytes(self) -> int:
        """Size of everything this client uploads."""
        return len(self.payload) + sum(len(b) for b in self.extras.values())


@dataclass(frozen=True)
class EvalTask:
    """Evaluate a state on one client's local test split.

    Attributes:
        client_id: which client.
        server_round: the round (seeds the personalisation steps).
        personalize_steps: > 0: first fine-tune that many local steps (the personalisation
            baseline); nothing is sent back but metrics.
    """

    client_id: int
    server_round: int
    personalize_steps: int = 0


@dataclass(frozen=True)
class EvalReply:
    """A client's evaluation of a state on its local test split.

    Attributes:
        client_id: which client.
        num_examples: local test examples evaluated.
        metrics: the task's metrics (e.g. `accuracy`, `loss`).
        failure: set when the evaluation failed.
    """

    client_id: int
    num_examples: int
    metrics: Mapping[str, float] = field(default_factory=dict)
    failure: Failure | None = None

    @property
    def ok(self) -> bool:
        """True when the evaluation succeeded."""
        return self.failure is None


@dataclass(frozen=True)
class FitResult:
    """A decoded and validated client update, as a strategy sees it."""

    client_id: int
    num_examples: int
    update: State
    extras: Mapping[str, State] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
