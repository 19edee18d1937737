"""The FM's own starting point on a task it can do without training, logged with round 0.

Federated gains are measured against what the foundation model already does. For the
instruction task round 0 is that already (the base model answers the prompts). For text
classification a freshly initialised head scores near chance, which flatters any training;
`eval.zero_shot_shots = k` also scores the pre-trained encoder as a nearest-class-prototype
classifier (Snell et al. 2017, https://arxiv.org/abs/1703.05175) built from k labelled
examples per class. They are drawn with the run's seed from the clients' training pool and
stand for a small public labelled set (the same draw `fedfm synth` shows its prompts).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from fedfm.data.federated import FederatedData
    from fedfm.tasks.text_classification import TextClassification

ZERO_SHOT = "zero_shot_accuracy"


def prototype_zero_shot(
    task: TextClassification, data: FederatedData, shots: int, seed: int
) -> dict[str, float]:
    """Central test accuracy of the nearest-class-prototype classifier on the task's encoder.

    Args:
        task: a text-classification task (its encoder: packaged weights, or random ones
            when `task.pretrained` is false).
        data: the run's split (prototypes come from the clients' training pool, scores from
            the central test split).
        shots: labelled examples per class.
        seed: draws the examples.

    Returns:
        `zero_shot_accuracy`, `zero_shot_shots` and `zero_shot_seconds`.
    """
    from fedfm.data.datasets import read_texts
    from fedfm.models.prototype import PrototypeClassifier
    from fedfm.synth.prompts import choose_seeds

    t = time.perf_counter()
    texts, labels, _, _ = read_texts(task.dataset, task.max_examples, task.seed)
    pool = np.sort(np.concatenate([c.train for c in data.clients.values()]))
    chosen = choose_seeds(labels, pool, shots, seed)
    idx = np.concatenate([chosen[c] for c in sorted(chosen)])
    classifier = PrototypeClassifier(task.text_encoder())
    classifier.fit([texts[i] for i in idx], labels[idx])
    test = data.central_test
    predicted = classifier.predict([texts[i] for i in test])
    return {
        ZERO_SHOT: float(np.mean(predicted == labels[test])) if len(test) else float("nan"),
        "zero_shot_shots": float(shots),
        "zero_shot_seconds": time.perf_counter() - t,
    }
