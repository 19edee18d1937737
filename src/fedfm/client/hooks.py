"""Client hooks: the client half of an algorithm, and the context they work on.

A hook lives in the same file as its server half (SCAFFOLD's `ControlVariates` beside
`Scaffold`, FedProx's `ProximalTerm` beside `FedProx`, ...), so a backend never imports
strategy internals and a deployed client runs exactly the code the simulation tested.
`ClientRuntime.fit` calls, in order: `before_train` of every hook, local training (with the
loss terms and gradient hooks the hooks registered), then `after_train` in reverse order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch

from fedfm.client.state import ClientStateStore
from fedfm.messages import FitTask
from fedfm.state import State

# A term added to the task's loss: (name -> trainable parameter) -> scalar tensor.
LossTerm = Callable[[dict[str, torch.nn.Parameter]], torch.Tensor]
# Called after gradient clipping, before the optimiser step: may read and edit `p.grad`.
GradHook = Callable[[dict[str, torch.nn.Parameter]], None]


@dataclass
class FitContext:
    """One client's fit in progress; hooks read and change it.

    Attributes:
        task: what the server asked.
        start: the state the client was sent (at its own LoRA rank).
        model_start: what is loaded into the model before training (hooks may pad it).
        store: this process's client state store (per-client persistent State).
        lr: the local learning rate in force.
        num_examples: the client's local training examples (DP-SGD's sampling rate).
        loss_terms: added to the task's loss at every step.
        grad_hooks: run on the gradients before every optimiser step.
        end: after training, the new trainable state (hooks may cut it back to `start`'s
            shapes).
        steps: local optimiser steps taken.
        extras: named States to send with the update (encoded by the uplink pipeline).
        metrics: numbers to report (merged into the reply's metrics).
    """

    task: FitTask
    start: State
    model_start: State
    store: ClientStateStore
    lr: float
    num_examples: int = 0
    loss_terms: list[LossTerm] = field(default_factory=list)
    grad_hooks: list[GradHook] = field(default_factory=list)
    end: State = field(default_factory=dict)
    steps: int = 0
    extras: dict[str, State] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def client_id(self) -> int:
        """The client this fit is for."""
        return self.task.client_id


class ClientHook(Protocol):
    """The client half of an algorithm family."""

    def setup(self, module: torch.nn.Module) -> None:
        """Once per runtime, before the trainable state is read (e.g. freeze LoRA A)."""
        ...

    def before_train(self, ctx: FitContext) -> None:
        """Before local training: set the starting state, loss terms, gradient hooks."""
        ...

    def after_train(self, ctx: FitContext) -> None:
        """After local training: adjust `ctx.end`, add extras, update client state."""
        ...


class HookBase:
    """A hook that does nothing; subclasses override what they need."""

    def setup(self, module: torch.nn.Module) -> None:
        """Nothing."""
        del module

    def before_train(self, ctx: FitContext) -> None:
        """Nothing."""
        del ctx

    def after_train(self, ctx: FitContext) -> None:
        """Nothing."""
        del ctx
