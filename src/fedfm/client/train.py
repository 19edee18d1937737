"""Local training on one client: a plain PyTorch loop over length-bucketed batches."""

from __future__ import annotations

from collections.abc import Mapping

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


def local_train(
    model: TrainableModel,
    dataset: TextDataset,
    indices: np.ndarray,
    cfg: ClientConfig,
    overrides: Mapping[str, Scalar],
    seeds: list[int],
) -> dict[str, float]:
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

    Returns:
        Metrics: `train_loss` (mean over steps), `steps`, `num_examples` (seen per epoch).
    """
    lr = float(overrides.get("lr", cfg.lr))
    epochs = int(overrides.get("epochs", cfg.epochs))
    max_steps = overrides.get("max_steps", cfg.max_steps)
    mu = float(overrides.get("proximal_mu", 0.0))
    rng = np.random.default_rng(seeds)
    torch.manual_seed(int(rng.integers(2**62)))  # dropout
    params = list(model.params.values())
    anchor: State | None = model.get_state() if mu > 0 else None
    opt = make_optimizer(params, cfg, lr)
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
            opt.step()
            steps += 1
            if max_steps is not None and steps >= int(max_steps):
                break
        if max_steps is not None and steps >= int(max_steps):
            break
    return {
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "steps": float(steps),
        "num_examples": float(len(indices)),
    }
