"""The values that pass between the stages of a round (frozen dataclasses).

`FitIns` goes from the strategy to a client, `ClientUpdate` from a client back to the server
(encoded bytes, as it would cross a network), `FitResult` is a decoded, validated update as
the strategy sees it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from fedfm.state import State

Scalar = int | float | str | bool


@dataclass(frozen=True)
class FitIns:
    """What one client is asked to do in one round.

    Attributes:
        client_id: which client.
        server_round: the round number, starting at 1.
        config: local settings that override the client config for this round
            (e.g. `lr`, `epochs`, `proximal_mu`).
        state: a client-specific starting state; `None` means the global state.
        extra: further named States sent down (e.g. SCAFFOLD's server control variate).
    """

    client_id: int
    server_round: int
    config: Mapping[str, Scalar] = field(default_factory=dict)
    state: State | None = None
    extra: Mapping[str, State] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientUpdate:
    """What a client sends back: the encoded update, or the reason it failed.

    Attributes:
        client_id: which client.
        num_examples: local training examples used (the FedAvg weight).
        payload: the update (new - old trainable state) after the client-side
            update pipeline, serialised with safetensors.
        extras: further serialised States (e.g. a SCAFFOLD control variate delta).
        metrics: the client's own training metrics (e.g. `train_loss`).
        error: set when the client failed; then `payload` is empty.
    """

    client_id: int
    num_examples: int
    payload: bytes = b""
    extras: Mapping[str, bytes] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    error: str | None = None

    def has_error(self) -> bool:
        """True when the client failed and the update must be ignored."""
        return self.error is not None

    @property
    def num_bytes(self) -> int:
        """Size of everything this client uploads."""
        return len(self.payload) + sum(len(b) for b in self.extras.values())


@dataclass(frozen=True)
class FitResult:
    """A decoded and validated client update, as a strategy sees it."""

    client_id: int
    num_examples: int
    update: State
    extra: Mapping[str, State] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
