"""Local training, task-agnostic: batches, a loss and an optimiser go in, steps come out.

The loop knows nothing of the problem: the task supplies batches and the loss, the caller
supplies the optimiser (so DP-SGD or a continuing optimiser slot in), and hooks add loss
terms (FedProx) and gradient hooks (SCAFFOLD) without branches here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fedfm.client.hooks import GradHook, LossTerm
from fedfm.tasks.base import Batch

# One epoch's batches, drawn with the given generator.
BatchSource = Callable[[np.random.Generator], Iterable[Batch]]
Loss = Callable[[torch.nn.Module, Batch], torch.Tensor]


def make_optimizer(
    params: Sequence[torch.nn.Parameter],
    name: str,
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) over `params`.

    Raises:
        ValueError: an unknown optimiser name.
    """
    if name == "adamw":
        return torch.optim.AdamW(list(params), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"client.optimizer must be 'adamw' or 'sgd', got {name!r}")


@dataclass(frozen=True)
class LocalResult:
    """What local training produced besides the new parameters.

    Attributes:
        train_loss: mean task loss over the steps (without hook loss terms); NaN if none.
        steps: optimiser steps taken.
    """

    train_loss: float
    steps: int


def local_train(
    module: torch.nn.Module,
    params: dict[str, torch.nn.Parameter],
    batches: BatchSource,
    loss_fn: Loss,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    max_steps: int | None,
    seeds: Sequence[int],
    grad_clip: float | None = None,
    loss_terms: Sequence[LossTerm] = (),
    grad_hooks: Sequence[GradHook] = (),
) -> LocalResult:
    """Train `params` of `module` in place.

    Randomness (batch order, dropout) comes only from `seeds`: the generator
    `np.random.default_rng(seeds)` first seeds torch (dropout) under a forked global RNG,
    then draws each epoch's batches, so a client's work is the same whenever it runs.

    Args:
        module: the model, holding the starting state.
        params: its trainable parameters by name.
        batches: one epoch's batches for a generator.
        loss_fn: the task's loss of a batch.
        optimizer: the optimiser over `params`.
        epochs: passes over the data.
        max_steps: stop after this many steps (`None`: no cap).
        seeds: entropy for this client and round, e.g. `[seed, server_round, client_id]`.
        grad_clip: clip the global gradient norm to this (`None`: no clipping).
        loss_terms: added to the loss at every step.
        grad_hooks: run after clipping, before every optimiser step.

    Returns:
        The mean training loss and the number of steps.
    """
    rng = np.random.default_rng(list(seeds))
    plist = list(params.values())
    losses: list[float] = []
    steps = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(rng.integers(2**62)))  # dropout
        module.train()
        for _ in range(epochs):
            for batch in batches(rng):
                loss = loss_fn(module, batch)
                losses.append(float(loss.detach()))
                for term in loss_terms:
                    loss = loss + term(params)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(plist, grad_clip)
                for hook in grad_hooks:
                    hook(params)
                optimizer.step()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
            if max_steps is not None and steps >= max_steps:
                break
    return LocalResult(float(np.mean(losses)) if losses else float("nan"), steps)
