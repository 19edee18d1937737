"""Poisoning attacks for a robustness harness (off by default, simulation only).

Model-poisoning attacks replace a malicious client's update before it is sent: the
`PoisonUpdate` stage runs first in the uplink pipeline, so clipping, noise or compression
configured after it treat the poisoned update as a real malicious client's. Label flipping
poisons the client's training data instead (`flip_labels`, a relabelled view of the examples).

- Sign flipping: Li et al. 2019 (RSA), https://arxiv.org/abs/1811.03761
- Gaussian (random) updates: Blanchard et al. 2017, https://arxiv.org/abs/1703.02757
- Scaling / model replacement: Bagdasaryan et al. 2020, https://arxiv.org/abs/1807.00459
- Label flipping y -> C-1-y: Fang et al. 2020, https://arxiv.org/abs/1911.11815
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection
from typing import Any, Literal

import numpy as np
import torch

from fedfm.errors import ConfigError
from fedfm.pipeline import StageBase, StageContext, StageKind
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


class PoisonUpdate(StageBase):
    """The first uplink stage of malicious clients: replace the update by an attack.

    Args:
        malicious: the malicious client ids.
        attack: "sign_flip", "gaussian" or "scale" (see `poison`).
        strength: the attack's parameter.
    """

    name = "poison"
    kind = StageKind.POISON

    def __init__(self, malicious: Collection[int], attack: Attack, strength: float) -> None:
        self.malicious = frozenset(int(c) for c in malicious)
        self.attack = attack
        self.strength = strength

    def encode(self, update: State, ctx: StageContext) -> tuple[State, dict[str, float]]:
        """Poison the update of a malicious client (its extras pass unchanged)."""
        if ctx.client_id not in self.malicious or ctx.stream != "update":
            return update, {}
        gen = torch.Generator().manual_seed(
            ctx.seed * 1_000_003 + ctx.server_round * 1009 + ctx.client_id
        )
        return poison(update, self.attack, self.strength, gen), {"poisoned": 1.0}


def flip_labels(examples: Any, clients: Collection[np.ndarray]) -> Any:
    """A copy of `examples` whose labels y on the given index arrays become C - 1 - y.

    Args:
        examples: a classification task's examples (with `labels` and `num_classes`).
        clients: the training index arrays of the malicious clients.

    Raises:
        ConfigError: the task's examples have no class labels.
    """
    ok = dataclasses.is_dataclass(examples) and not isinstance(examples, type)
    if not (ok and hasattr(examples, "labels") and hasattr(examples, "num_classes")):
        raise ConfigError("attack.kind='label-flip' needs a classification task")
    view: Any = examples
    labels = np.array(view.labels, copy=True)
    k = int(view.num_classes)
    for idx in clients:
        labels[idx] = k - 1 - labels[idx]
    return dataclasses.replace(view, labels=labels)
