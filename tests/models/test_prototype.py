"""Nearest-class-prototype classification: the maths on a toy encoder, the real mean-pooled
encoder on the tiny BERT."""

import numpy as np
import pytest
import torch

from fedfm.models.prototype import PrototypeClassifier

VOCAB = ["good", "great", "fun", "bad", "dull", "awful", "film"]


class BagOfWords:
    """A toy `TextEncoder`: word counts over a fixed vocabulary."""

    def encode(self, texts):
        return torch.tensor(
            [[float(t.split().count(w)) for w in VOCAB] for t in texts], dtype=torch.float32
        )


def test_prototypes_are_unit_means_and_predict_the_nearest_class():
    # Prepare
    texts = ["good film", "great fun", "bad film", "dull awful"]
    clf = PrototypeClassifier(BagOfWords())
    # Execute
    clf.fit(texts, [3, 3, 7, 7])
    # Assert: labels need not be 0..k-1; prototypes have unit norm
    assert clf.classes_.tolist() == [3, 7]
    assert torch.allclose(clf.prototypes_.norm(dim=1), torch.ones(2))
    assert clf.predict(["great good", "awful film film", "dull"]).tolist() == [3, 7, 7]
    scores = clf.scores(["good"])
    assert scores.shape == (1, 2) and scores[0, 0] > scores[0, 1]
    assert clf.predict([]).shape == (0,)


def test_predict_before_fit_and_a_bad_fit_are_refused():
    clf = PrototypeClassifier(BagOfWords())
    with pytest.raises(RuntimeError, match="call fit"):
        clf.predict(["good"])
    with pytest.raises(ValueError, match="as many labels as texts"):
        clf.fit(["good", "bad"], [0])


def test_the_task_encoder_mean_pools_over_real_tokens_only():
    # Prepare: the tiny BERT of configs/tiny.toml, built by the task (random, seeded)
    from fedfm.tasks.text_classification import TextClassification

    task = TextClassification("tiny-bert", "synthetic", 32)
    encoder = task.text_encoder(batch_size=4)
    texts = ["w1 w2", "w1 w2 w3 w4 w5 w6 w7 w8 w9", "w30"]
    # Execute
    together = encoder.encode(texts)
    alone = torch.cat([encoder.encode([t]) for t in texts])
    again = task.text_encoder().encode(texts)
    # Assert: padding does not move an embedding; the same seed gives the same encoder
    assert together.shape == (3, 32)
    assert torch.allclose(together, alone, atol=1e-5)
    assert torch.equal(together, again)


def test_the_prototype_classifier_on_the_tiny_task_beats_chance():
    from fedfm.data.datasets import read_texts
    from fedfm.tasks.text_classification import TextClassification

    texts, labels, _, _ = read_texts("synthetic")
    seeds = np.concatenate([np.flatnonzero(labels == c)[:6] for c in (0, 1)])
    clf = PrototypeClassifier(TextClassification("tiny-bert", "synthetic", 32).text_encoder())
    clf.fit([texts[i] for i in seeds], labels[seeds])
    accuracy = (clf.predict(texts[200:400]) == labels[200:400]).mean()
    assert accuracy > 0.65  # 0.775 on 400 texts when written; chance is 0.5
