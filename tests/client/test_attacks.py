"""Poisoning attacks for the robustness harness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedfm.client.attacks import (
    PoisonUpdate,
    choose_malicious,
    flip_labels,
    gaussian,
    poison,
    scale,
    sign_flip,
)
from fedfm.errors import ConfigError
from fedfm.pipeline import Pipeline
from fedfm.tasks.digits import DigitsExamples

UPDATE = {"a": torch.tensor([1.0, -2.0]), "b": torch.ones(2, 2, dtype=torch.float64)}


def test_sign_flip_and_scale() -> None:
    assert torch.equal(sign_flip(UPDATE)["a"], torch.tensor([-1.0, 2.0]))
    assert torch.equal(sign_flip(UPDATE, scale=3.0)["a"], torch.tensor([-3.0, 6.0]))
    assert torch.equal(scale(UPDATE, 10.0)["b"], torch.full((2, 2), 10.0, dtype=torch.float64))


def test_gaussian_is_seeded_and_keeps_structure() -> None:
    # Prepare
    big = {"w": torch.zeros(20_000)}
    # Execute
    one = gaussian(UPDATE, 0.5, torch.Generator().manual_seed(0))
    two = gaussian(UPDATE, 0.5, torch.Generator().manual_seed(0))
    noise = gaussian(big, 2.0, torch.Generator().manual_seed(1))["w"]
    # Assert
    assert all(torch.equal(one[k], two[k]) for k in UPDATE)
    assert {k: (v.shape, v.dtype) for k, v in one.items()} == {
        k: (v.shape, v.dtype) for k, v in UPDATE.items()
    }
    assert float(noise.std()) == pytest.approx(2.0, rel=0.05)
    assert abs(float(noise.mean())) < 0.1


def test_poison_dispatch() -> None:
    assert poison(UPDATE, "none") is UPDATE
    assert torch.equal(poison(UPDATE, "sign_flip", 2.0)["a"], torch.tensor([-2.0, 4.0]))
    assert torch.equal(poison(UPDATE, "scale", 2.0)["a"], torch.tensor([2.0, -4.0]))
    assert poison(UPDATE, "gaussian", 1.0)["b"].shape == (2, 2)
    with pytest.raises(ValueError, match="sign_flip"):
        poison(UPDATE, "backdoor")  # type: ignore[arg-type]


def test_choose_malicious_is_deterministic_and_sized() -> None:
    picked = choose_malicious(10, 0.3, seed=7)
    assert picked == choose_malicious(10, 0.3, seed=7)
    assert len(picked) == 3 and picked <= set(range(10))
    assert choose_malicious(10, 0.0, seed=7) == set()
    assert choose_malicious(4, 1.0, seed=0) == {0, 1, 2, 3}
    assert len({frozenset(choose_malicious(50, 0.2, seed=s)) for s in range(5)}) > 1
    with pytest.raises(ValueError, match="fraction"):
        choose_malicious(10, 1.5, seed=0)


def test_flip_labels_relabels_only_the_given_indices() -> None:
    # Prepare
    ex = DigitsExamples(np.zeros((6, 64), np.float32), np.array([0, 1, 2, 9, 5, 5]))
    # Execute
    flipped = flip_labels(ex, [np.array([0, 3]), np.array([4])])
    # Assert
    assert flipped.labels.tolist() == [9, 1, 2, 0, 4, 5]
    assert ex.labels.tolist() == [0, 1, 2, 9, 5, 5]  # the original is untouched
    with pytest.raises(ConfigError, match="classification"):
        flip_labels({"no": "labels"}, [np.array([0])])


def test_poison_stage_changes_only_malicious_updates() -> None:
    # Prepare
    pipe = Pipeline([PoisonUpdate({1}, "sign_flip", 2.0)])
    # Execute
    honest, _ = pipe.stages[0].encode(UPDATE, pipe.context(0, 1))
    bad, metrics = pipe.stages[0].encode(UPDATE, pipe.context(1, 1))
    extra, _ = pipe.stages[0].encode(UPDATE, pipe.context(1, 1, "scaffold.control_delta"))
    # Assert
    assert honest is UPDATE and extra is UPDATE
    assert torch.equal(bad["a"], torch.tensor([-2.0, 4.0])) and metrics == {"poisoned": 1.0}
