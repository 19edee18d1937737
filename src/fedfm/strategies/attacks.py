"""Poisoning attacks for a robustness harness (off by default): pure functions on updates.

Model-poisoning attacks replace a malicious client's update before it is sent; label
flipping poisons its data instead.

- Sign flipping: Li et al. 2019 (RSA), https://arxiv.org/abs/1811.03761
- Gaussian (random) updates: Blanchard et al. 2017, https://arxiv.org/abs/1703.02757
- Scaling / model replacement: Bagdasaryan et al. 2020, https://arxiv.org/abs/1807.00459
- Label flipping y -> C-1-y: Fang et al. 2020, https://arxiv.org/abs/1911.11815
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from fedfm.state import State

Attack = Literal["none", "sign_flip", "gaussian", "scale"]
ATTACKS: tuple[Attack, ...] = ("none", "sign_flip", "gaussian", "scale")


def sign_flip(update: State, scale: float = 1.0) -> State:
    """Return `-scale * update`."""
    return {k: -scale * v for k, v in update.items()}


def gaussian(update: State, std: float, generator: torch.Generator | None = None) -> State:
    """Replace every entry by N(0, std²) noise (same names, shapes, dtypes and devices).

    Args:
        update: the honest update (only its structure is used).
        std: the noise standard deviation, ≥ 0.
        generator: a seeded generator for reproducible runs; must live on the update's device.
    """
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std}")
    return {
        k: std * torch.randn(v.shape, generator=generator, dtype=v.dtype, device=v.device)
        for k, v in update.items()
    }


def scale(update: State, lam: float) -> State:
    """Return `lam * update` (model replacement boosts by about n_clients / server_lr)."""
    return {k: lam * v for k, v in update.items()}


def poison(
    update: State,
    attack: Attack,
    strength: float = 1.0,
    generator: torch.Generator | None = None,
) -> State:
    """Apply one named attack: "none" (unchanged), "sign_flip" (−strength·u), "gaussian"
    (N(0, strength²) noise) or "scale" (strength·u).

    Raises:
        ValueError: an unknown attack name.
    """
    if attack == "none":
        return update
    if attack == "sign_flip":
        return sign_flip(update, strength)
    if attack == "gaussian":
        return gaussian(update, strength, generator)
    if attack == "scale":
        return scale(update, strength)
    raise ValueError(f"attack must be one of {list(ATTACKS)}, got {attack!r}")


def choose_malicious(num_clients: int, fraction: float, seed: int) -> set[int]:
    """Pick ⌊fraction · num_clients⌋ malicious client ids, the same for the same seed.

    Args:
        num_clients: clients are 0 .. num_clients - 1.
        fraction: share of malicious clients, in [0, 1].
        seed: the seed of the choice.

    Returns:
        The malicious client ids.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must lie in [0, 1], got {fraction}")
    if num_clients < 0:
        raise ValueError(f"num_clients must be >= 0, got {num_clients}")
    k = math.floor(fraction * num_clients + 1e-9)  # 1e-9: 0.3 * 10 must give 3, not 2
    picked = np.random.default_rng(seed).choice(num_clients, size=k, replace=False)
    return {int(c) for c in picked}


def flip_labels(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label flipping: y -> num_classes - 1 - y.

    Raises:
        ValueError: a label outside [0, num_classes).
    """
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.unique().tolist()}")
    return num_classes - 1 - labels
