"""Local training on one client: a plain PyTorch loop over length-bucketed batches."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from fedfm.config import ClientConfig
from fedfm.core import Scalar
from fedfm.data.batching import bucketed_batches, collate
from fedfm.data.datasets import TextDataset
from fedfm.models.trainable import TrainableModel
from fedfm.state import State


def make_optimizer(
    params: list[torch.nn.Parameter], cfg: ClientConfig, lr: float
) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) over the trainable parameters."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


@dataclass(frozen=True)
class LocalResult:
    """What local training produced besides the new parameters.

    Attributes:
        metrics: `train_loss` (mean over steps), `steps`, `num_examples`.
        mean_grad: the mean minibatch gradient (before any correction), when asked for.
    """

    metrics: dict[str, float]
    mean_grad: State | None = None


def local_train(
    model: TrainableModel,
    dataset: TextDataset,
    indices: np.ndarray,
    cfg: ClientConfig,
    overrides: Mapping[str, Scalar],
    seeds: list[int],
    grad_correction: State | None = None,
    track_mean_grad: bool = False,
    optimizer: torch.optim.Optimizer | None = None,
) -> LocalResult:
    """Train the model's trainable parameters in place on `indices`.

    The caller has loaded the starting state into `model`. Randomness (batch order,
    dropout) comes only from `seeds`, so a client's work is the same whenever it runs.

    Args:
        model: the model, holding the starting state.
        dataset: the tokenised dataset.
        indices: this client's training examples.
        cfg: the client config.
        overrides: per-round settings from the strategy: `lr`, `epochs`, `max_steps`,
            `proximal_mu` (FedProx, https://arxiv.org/abs/1812.06127).
        seeds: entropy for this client and round, e.g. `[seed, server_round, client_id]`.
        grad_correction: added to each gradient before the step (SCAFFOLD's c - c_i).
        track_mean_grad: also return the mean clipped minibatch gradient.
        optimizer: continue with this optimiser (centralised baseline) instead of a
            fresh one, as federated clients use each round.

    Returns:
        The metrics, and the mean gradient when asked for.
    """
    lr = float(overrides.get("lr", cfg.lr))
    epochs = int(overrides.get("epochs", cfg.epochs))
    max_steps = overrides.get("max_steps", cfg.max_steps)
    mu = float(overrides.get("proximal_mu", 0.0))
    rng = np.random.default_rng(seeds)
    torch.manual_seed(int(rng.integers(2**62)))  # dropout
    params = list(model.params.values())
    anchor: State | None = model.get_state() if mu > 0 else None
    grad_sum: State | None = (
        {n: torch.zeros_like(p) for n, p in model.params.items()} if track_mean_grad else None
    )
    opt = optimizer if optimizer is not None else make_optimizer(params, cfg, lr)
    lengths = dataset.lengths
    model.module.train()
    losses: list[float] = []
    steps = 0
    for _ in range(epochs):
        for batch in bucketed_batches(lengths, indices, cfg.batch_size, rng):
            ids, mask, labels = collate(dataset, batch)
            loss = torch.nn.functional.cross_entropy(model.logits(ids, mask), labels)
            losses.append(float(loss.detach()))
            if anchor is not None:
                prox = sum(((p - anchor[n]) ** 2).sum() for n, p in model.params.items())
                loss = loss + 0.5 * mu * prox
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            if grad_sum is not None or grad_correction is not None:
                _adjust_grads(model, grad_sum, grad_correction)
            opt.step()
            steps += 1
            if max_steps is not None and steps >= int(max_steps):
                break
        if max_steps is not None and steps >= int(max_steps):
            break
    metrics = {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": float(steps),
        "num_examples": float(len(indices)),
    }
    mean_grad = None
    if grad_sum is not None:
        mean_grad = {n: g / max(steps, 1) for n, g in grad_sum.items()}
    return LocalResult(metrics, mean_grad)


def _adjust_grads(model: TrainableModel, grad_sum: State | None, correction: State | None) -> None:
    """Record the raw gradient, then add the correction in place."""
    with torch.no_grad():
        for name, param in model.params.items():
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            if grad_sum is not None:
                grad_sum[name].add_(param.grad)
            if correction is not None:
                param.grad.add_(correction[name])
