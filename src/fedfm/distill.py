"""Knowledge distillation: the softened-logit KL loss, FedDF's server step, and a run's model
distilled into a small student.

Hinton et al. 2015, https://arxiv.org/abs/1503.02531: the student matches the teacher's
softmax at temperature T, with KL(teacher || student) scaled by T² so gradients keep their
size as T changes. `EnsembleDistiller` is FedDF's server step (the teacher is the mean of the
client models' logits). `distill_run` distils a finished run's global model into a small
student for weak clients (a 2-layer BERT for text, a small CNN for images; see
`fedfm.models.students`) and compares it with the same student trained alone on labels. Both
tasks go through the task's own `batches`, `logits` and `evaluate`, so one training loop,
one agreement and one timing serve both.

The transfer set of `distill_run` is the run's own training pool (every client's training
examples, the inputs only); the student-alone baseline trains on the same examples with their
labels, with the same initialisation, batches and steps; every model is scored on the run's
central test split, which neither student sees.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch

from fedfm.errors import ConfigError
from fedfm.state import State

if TYPE_CHECKING:
    from fedfm.config import Config
    from fedfm.data.datasets import TextDataset
    from fedfm.data.images import ImageExamples
    from fedfm.models.trainable import TrainableModel
    from fedfm.tasks.base import Batch, Examples
    from fedfm.tasks.classify import Classifier


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(teacher/T) || softmax(student/T)), averaged over the batch.

    Args:
        student: [batch, classes] logits with a graph.
        teacher: [batch, classes] logits (no graph needed).
        temperature: T > 0.
    """
    log_p = torch.log_softmax(student / temperature, dim=-1)
    log_q = torch.log_softmax(teacher / temperature, dim=-1)
    kl = torch.nn.functional.kl_div(log_p, log_q, log_target=True, reduction="batchmean")
    return kl * temperature**2


def server_reserve(cfg: Config) -> int:
    """How many pool examples the run keeps from the clients.

    FedDF's `strategy.server_examples` in a federated run, else `data.server_examples` (0 by
    default), so a baseline can hold back the same examples and train on the same split.
    """
    from fedfm.strategies.configs import FedDFConfig

    if cfg.mode == "federated" and isinstance(cfg.strategy, FedDFConfig):
        return cfg.strategy.server_examples
    return cfg.data.server_examples


class EnsembleDistiller:
    """FedDF's server step on a fixed unlabelled set (a `fedfm.strategies.feddf.ServerDistill`).

    The set is cut into batches once (evaluation order, labels dropped); each call computes
    the teachers' mean logits per batch, then takes `steps` Adam steps from `start` on batches
    drawn by a generator seeded with (seed, server_round), under a torch seed of its own, so
    a resumed run repeats it bit for bit.

    Args:
        task: a classification task.
        model: the model whose trainable state is swapped in (shared with the runtime).
        examples: the task's examples.
        indices: the unlabelled server set.
        steps: optimiser steps per round.
        temperature: softmax temperature T.
        lr: Adam's step size.
        batch_size: examples per batch.
        seed: the run's seed.
    """

    def __init__(
        self,
        task: Classifier,
        model: TrainableModel,
        examples: Examples,
        indices: np.ndarray,
        steps: int,
        temperature: float,
        lr: float,
        batch_size: int,
        seed: int,
    ) -> None:
        if len(indices) == 0:
            raise ConfigError("strategy.server_examples: the server set is empty; allowed: >= 1")
        self.task, self.model, self.steps = task, model, steps
        self.temperature, self.lr, self.seed = temperature, lr, seed
        self.batches_: list[Batch] = [
            {k: v for k, v in b.items() if k != "labels"}
            for b in task.batches(examples, indices, batch_size, None)
        ]

    def ensemble_logits(self, teachers: Sequence[State]) -> list[torch.Tensor]:
        """[batch, classes] mean logits of `teachers`, one tensor per batch."""
        total: list[torch.Tensor] = []
        self.model.module.eval()
        with torch.inference_mode():
            for teacher in teachers:
                self.model.set_state(teacher)
                logits = [self.task.logits(self.model.module, b) for b in self.batches_]
                total = logits if not total else [t + x for t, x in zip(total, logits, strict=True)]
        return [t / len(teachers) for t in total]

    def kl_to(self, state: State, targets: Sequence[torch.Tensor]) -> float:
        """Mean `kd_loss` of `state` against per-batch target logits over the server set."""
        self.model.set_state(state)
        self.model.module.eval()
        with torch.inference_mode():
            losses = [
                float(kd_loss(self.task.logits(self.model.module, b), t, self.temperature))
                for b, t in zip(self.batches_, targets, strict=True)
            ]
        return float(np.mean(losses))

    def __call__(self, server_round: int, start: State, teachers: Sequence[State]) -> State:
        """`start` after `steps` distillation steps toward the mean of `teachers`."""
        targets = self.ensemble_logits(teachers)
        rng = np.random.default_rng([self.seed, server_round, 0xDF])
        self.model.set_state(start)
        module = self.model.module
        optimizer = torch.optim.Adam(list(self.model.params.values()), lr=self.lr)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            module.train()
            for _ in range(self.steps):
                b = int(rng.integers(len(self.batches_)))
                loss = kd_loss(
                    self.task.logits(module, self.batches_[b]), targets[b], self.temperature
                )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        module.eval()
        return self.model.get_state()


def train_student(
    task: Classifier,
    student: torch.nn.Module,
    examples: Examples,
    indices: np.ndarray,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    teacher: torch.nn.Module | None = None,
    temperature: float = 1.0,
) -> tuple[list[float], int]:
    """Train `student` on `indices`: KD from `teacher` (labels unused), or cross-entropy on
    labels when `teacher` is None. Batches and dropout are seeded by `seed` alone, so both
    modes see the same batches in the same order.

    Returns:
        The mean loss of each epoch, and the number of optimiser steps taken.
    """
    rng = np.random.default_rng([seed, 0x57])
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    losses: list[float] = []
    steps = 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(epochs):
            epoch: list[float] = []
            for batch in task.batches(examples, indices, batch_size, rng):
                student.train()
                if teacher is None:
                    loss = task.loss(student, batch)
                else:
                    unlabelled = {k: v for k, v in batch.items() if k != "labels"}
                    with torch.inference_mode():
                        target = task.logits(teacher, unlabelled)
                    loss = kd_loss(task.logits(student, unlabelled), target.clone(), temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                epoch.append(float(loss.detach()))
                steps += 1
            losses.append(float(np.mean(epoch)))
    student.eval()
    return losses, steps


def agreement(
    task: Classifier, a: torch.nn.Module, b: torch.nn.Module, examples: Examples, idx: np.ndarray
) -> float:
    """Share of `idx` where `a` and `b` predict the same class."""
    a.eval()
    b.eval()
    same = 0
    with torch.inference_mode():
        for batch in task.batches(examples, idx, 64, None):
            same += int(
                (task.logits(a, batch).argmax(-1) == task.logits(b, batch).argmax(-1)).sum()
            )
    return same / max(len(idx), 1)


def seconds_per_example(
    task: Classifier, modules: Sequence[torch.nn.Module], examples: Examples, idx: np.ndarray
) -> list[float]:
    """Inference time per example of each module, measured in turns after one warm-up pass
    each (the best of three, batch size 32), in this process."""
    batches = list(task.batches(examples, idx, 32, None))
    best = [math.inf] * len(modules)
    with torch.inference_mode():
        for repeat in range(4):
            for i, module in enumerate(modules):
                module.eval()
                t = time.perf_counter()
                for batch in batches:
                    task.logits(module, batch)
                if repeat > 0:  # the first pass warms up
                    best[i] = min(best[i], (time.perf_counter() - t) / max(len(idx), 1))
    return best


@dataclass(frozen=True)
class DistillReport:
    """What `distill_run` measured (accuracies on the run's central test split)."""

    student: str
    transfer_set: str
    transfer_examples: int
    test_examples: int
    epochs: int
    steps: int  # the distilled student's optimiser steps
    alone_steps: int  # the student alone's (the same batches: equal to `steps`)
    temperature: float
    teacher_accuracy: float
    student_accuracy: float
    student_alone_accuracy: float
    student_teacher_agreement: float
    teacher_params: int
    student_params: int
    teacher_seconds_per_example: float
    student_seconds_per_example: float
    distill_losses: list[float]
    alone_losses: list[float]

    def table(self) -> str:
        """A plain-text table of the comparison."""
        rows = [
            ("teacher (run's global model)", self.teacher_accuracy, self.teacher_params,
             self.teacher_seconds_per_example),
            (f"student {self.student}, distilled", self.student_accuracy, self.student_params,
             self.student_seconds_per_example),
            (f"student {self.student}, alone", self.student_alone_accuracy, self.student_params,
             self.student_seconds_per_example),
        ]  # fmt: skip
        lines = [f"{'model':34s} {'accuracy':>9s} {'params':>12s} {'ms/example':>11s}"]
        lines += [f"{n:34s} {a:9.4f} {p:12,d} {s * 1e3:11.3f}" for n, a, p, s in rows]
        return "\n".join(lines)


def fresh_student(task: Classifier, examples: Examples, name: str, seed: int) -> torch.nn.Module:
    """The randomly initialised student `name` for `task`'s inputs and classes: a text student
    shares the teacher's vocabulary, a CNN reads the task's image batches."""
    from fedfm.models.students import build_bert_student, build_cnn_student
    from fedfm.tasks.image_classification import ImageClassification
    from fedfm.tasks.text_classification import TextClassification

    if isinstance(task, TextClassification):
        from fedfm.models.catalogue import load_tokenizer

        text = cast("TextDataset", examples)
        vocab = len(load_tokenizer(task.model))
        student: torch.nn.Module = build_bert_student(
            name, vocab, text.num_classes, task.max_length, seed
        )
        return student
    if isinstance(task, ImageClassification):
        return build_cnn_student(name, cast("ImageExamples", examples).num_classes, seed)
    raise ConfigError(f"fedfm distill has no student for task {task.name!r}")


def distill_run(
    run_dir: Path,
    out: Path,
    student: str | None = None,
    epochs: int = 3,
    temperature: float = 2.0,
    lr: float = 1e-3,
) -> DistillReport:
    """Distil the final global model of `run_dir` into a small student; write
    `out/distill.json` and the student (`out/student/`, see `fedfm.models.students`).

    Args:
        run_dir: a finished text- or image-classification run.
        out: the folder to write.
        student: a student of the run's task (`None`: the task's default, bert-2layer for
            text, cnn-small for images).
        epochs: passes over the transfer set.
        temperature: softmax temperature T of the KD loss.
        lr: AdamW's step size (both students).

    Raises:
        ConfigError: the run's task has no students, the student does not fit it, or a bad
            setting.
        CheckpointError: no checkpoint in `run_dir`.
    """
    import json

    from fedfm.checkpoint import atomic_write_bytes
    from fedfm.data.federated import federate
    from fedfm.export import load_run_model
    from fedfm.models.students import check_student_name, save_student, student_for
    from fedfm.run import stored_config
    from fedfm.rundir import config_path

    if student is not None:
        check_student_name(student)
    if epochs < 1 or temperature <= 0 or lr <= 0:
        raise ConfigError(
            f"--epochs {epochs} / --temperature {temperature} / lr {lr}: "
            "allowed values are epochs >= 1, temperature > 0, lr > 0"
        )
    if config_path(run_dir).exists():  # refuse a wrong student before loading the teacher
        student_for(stored_config(run_dir).task.name, student)
    loaded = load_run_model(run_dir)
    cfg, task = loaded.cfg, cast("Classifier", loaded.task)
    name = student_for(task.name, student)
    examples = task.load_examples()
    data = federate(examples, cfg.data, cfg.partition, cfg.seed, server_reserve(cfg))
    pool = np.sort(np.concatenate([c.train for c in data.clients.values()]))
    test = data.central_test
    # two copies of one initialisation: the distilled student and the student alone
    distilled = fresh_student(task, examples, name, cfg.seed)
    alone = fresh_student(task, examples, name, cfg.seed)
    bs = cfg.client.batch_size
    kd, kd_steps = train_student(
        task, distilled, examples, pool, epochs, bs, lr, cfg.seed, loaded.module, temperature
    )
    ce, ce_steps = train_student(task, alone, examples, pool, epochs, bs, lr, cfg.seed)

    def acc(module: torch.nn.Module) -> float:
        return task.evaluate(module, examples, test, cfg.eval.batch_size)["accuracy"]

    def count(module: torch.nn.Module) -> int:
        return sum(p.numel() for p in module.parameters())

    t_teacher, t_student = seconds_per_example(task, [loaded.module, distilled], examples, test)
    report = DistillReport(
        student=name,
        transfer_set="the run's client training examples, inputs only",
        transfer_examples=len(pool),
        test_examples=len(test),
        epochs=epochs,
        steps=kd_steps,
        alone_steps=ce_steps,
        temperature=temperature,
        teacher_accuracy=acc(loaded.module),
        student_accuracy=acc(distilled),
        student_alone_accuracy=acc(alone),
        student_teacher_agreement=agreement(task, distilled, loaded.module, examples, test),
        teacher_params=count(loaded.module),
        student_params=count(distilled),
        teacher_seconds_per_example=t_teacher,
        student_seconds_per_example=t_student,
        distill_losses=kd,
        alone_losses=ce,
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "distill.json", json.dumps(asdict(report), indent=1).encode())
    save_student(distilled, out / "student")
    return report
