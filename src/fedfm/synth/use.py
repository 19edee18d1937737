"""Synthetic examples in a run: extra rows of the task's examples, then one or both uses.

- `synth.warmup_steps`: the server trains the initial model on every synthetic example for
  that many steps before round 1 (GPT-FL, Zhang et al. 2023, https://arxiv.org/abs/2306.02210).
  It changes `Built.initial_state`, so round 0, a resumed run and the centralised and
  local-only baselines all start from the warmed-up model.
- `synth.fill_missing`: each client whose training split lacks a class gets that many
  synthetic examples of it, drawn per (seed, client, class), in its training split only;
  local test splits and the central test split never see a synthetic example.

Synthetic texts are tokenised by the task exactly as its own texts are and appended after
them, so every real example keeps its index and the split is unchanged. Each client gets its
own copies of the rows it draws (a label-flipping attacker relabels only its own).
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from fedfm.data.federated import ClientData, FederatedData
from fedfm.errors import ConfigError
from fedfm.synth.card import SyntheticExample, read_synthetic

if TYPE_CHECKING:
    from fedfm.config import Config
    from fedfm.data.datasets import TextDataset
    from fedfm.models.trainable import TrainableModel
    from fedfm.tasks.base import Task
    from fedfm.tasks.text_classification import TextClassification

WARMUP_SALT = 0x5A17  # warm-up batches and dropout draw from (seed, salt)
FILL_SALT = 0xF111  # a client's fill-in draws from (seed, client, class, salt)
GROUP = "synthetic"  # the natural group of every synthetic row


@dataclass
class SyntheticData:
    """The run's data with the synthetic rows attached.

    Attributes:
        data: the examples (real rows first, then synthetic) and the clients' splits.
        warmup: indices of the rows the warm-up trains on (empty without a warm-up).
        summary: what each use added (goes into `summary.json` as `synthetic`).
    """

    data: FederatedData
    warmup: np.ndarray
    summary: dict[str, Any]

    def warm_up(self, cfg: Config, task: Task, model: TrainableModel) -> None:
        """Train `model`'s trainable state on the warm-up rows (in place), seeded."""
        from fedfm.client.train import local_train, make_optimizer

        s, c = cfg.synth, cfg.client
        if s.warmup_steps == 0:
            return
        t = time.perf_counter()
        lr = s.warmup_lr if s.warmup_lr is not None else c.lr
        params = model.params
        optimizer = make_optimizer(
            list(params.values()), c.optimizer, lr, c.weight_decay, c.momentum
        )
        per_epoch = math.ceil(len(self.warmup) / c.batch_size)
        result = local_train(
            model.module,
            params,
            lambda rng: task.batches(self.data.examples, self.warmup, c.batch_size, rng),
            task.loss,
            optimizer,
            epochs=math.ceil(s.warmup_steps / per_epoch),
            max_steps=s.warmup_steps,
            seeds=[cfg.seed, WARMUP_SALT],
            grad_clip=c.grad_clip,
        )
        model.module.eval()
        self.summary["warmup"].update(
            steps_taken=result.steps,
            train_loss=result.train_loss,
            seconds=time.perf_counter() - t,
        )


def attach_synthetic(cfg: Config, task: Task, data: FederatedData) -> SyntheticData:
    """Read `synth.path` and append the rows its uses need to the examples and splits.

    Raises:
        ConfigError: the directory's classes are not the task's.
    """
    from fedfm.synth.make import split_of

    s = cfg.synth
    assert s.path is not None  # check_synth: a use needs a path
    synthetic = read_synthetic(s.path)
    real = cast("TextDataset", data.examples)
    if synthetic.label_names != tuple(real.label_names):
        raise ConfigError(
            f"synth.path: its classes {list(synthetic.label_names)} are not the task's "
            f"{list(real.label_names)}"
        )
    if synthetic.card.get("central_test_split") != split_of(cfg):
        warnings.warn(
            f"synth.path was filtered against another central test split "
            f"({synthetic.card.get('central_test_split')}): its test-overlap check does not "
            "cover this run's",
            stacklevel=2,
        )
    rows: list[SyntheticExample] = []
    if s.warmup_steps > 0:
        rows += synthetic.examples
    warmup = np.arange(len(real), len(real) + len(rows), dtype=np.int64)
    clients, added = _fill_missing(cfg, real, data.clients, synthetic.examples, rows)
    ids = cast("TextClassification", task).encode_texts([r.text for r in rows])
    labels = np.asarray([r.label for r in rows], dtype=np.int64)
    groups = None if real.groups is None else np.concatenate([real.groups, [GROUP] * len(rows)])
    examples = dataclasses.replace(
        real,
        input_ids=[*real.input_ids, *ids],
        labels=np.concatenate([real.labels, labels]),
        groups=groups,
    )
    summary: dict[str, Any] = {
        "path": s.path,
        "examples_sha256": synthetic.sha256,
        "available": synthetic.per_class(),
        "warmup": {
            "examples": len(warmup),
            "steps": s.warmup_steps,
            "lr": s.warmup_lr if s.warmup_lr is not None else cfg.client.lr,
        },
        "fill_missing": {
            "per_missing_class": s.fill_missing,
            "added": sum(n for counts in added.values() for n in counts.values()),
            "clients": added,
        },
    }
    return SyntheticData(
        dataclasses.replace(data, examples=examples, clients=clients), warmup, summary
    )


def _fill_missing(
    cfg: Config,
    real: TextDataset,
    clients: dict[int, ClientData],
    pool: list[SyntheticExample],
    rows: list[SyntheticExample],
) -> tuple[dict[int, ClientData], dict[str, dict[str, int]]]:
    """Each client's split with `fill_missing` rows of every class its training split lacks
    (appended to `rows`); and client id -> class name -> rows added, for clients that got any."""
    n = cfg.synth.fill_missing
    if n == 0:
        return clients, {}
    by_class = {c: [e for e in pool if e.label == c] for c in range(len(real.label_names))}
    out: dict[int, ClientData] = {}
    added: dict[str, dict[str, int]] = {}
    for cid in sorted(clients):
        shard = clients[cid]
        present = set(np.unique(real.labels[shard.train]).tolist())
        new: list[int] = []
        for c in range(len(real.label_names)):
            if c in present:
                continue
            rng = np.random.default_rng([cfg.seed, cid, c, FILL_SALT])
            pick = np.sort(rng.choice(len(by_class[c]), n, replace=False))
            new += range(len(real) + len(rows), len(real) + len(rows) + n)
            rows += [by_class[c][int(i)] for i in pick]
            added.setdefault(str(cid), {})[real.label_names[c]] = n
        train = np.concatenate([shard.train, np.asarray(new, dtype=np.int64)])
        out[cid] = dataclasses.replace(shard, train=train) if new else shard
    return out, added
