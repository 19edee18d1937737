"""The `Task` seam: one kind of problem (model, examples, batches, loss, metrics).

Everything below the round loop that depends on the problem goes through a Task: the client
runtime trains with `task.batches` and `task.loss`, the central evaluator and the clients
evaluate with `task.evaluate`, the partitioners split on `examples.partition_labels` and
`examples.groups`, and the adapter wrapper reads `peft_task_type` and `head_prefixes`.
A new task is one file plus one line in `fedfm.tasks.registry`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import numpy as np
import torch

Batch = dict[str, torch.Tensor]


class Examples(Protocol):
    """A task's examples, held in memory and addressed by index."""

    @property
    def partition_labels(self) -> np.ndarray:
        """[n] int64: what label-skew partitioners split on (class, or task category)."""
        ...

    @property
    def groups(self) -> np.ndarray | None:
        """[n] natural group of each example (movie, speaker, writer), or `None`."""
        ...

    def __len__(self) -> int: ...


class Task(Protocol):
    """One kind of problem.

    Attributes:
        name: the registry name.
        primary_metric: the metric the loop, the summary and the report lead with.
        peft_task_type: PEFT's task type (`"SEQ_CLS"`, `"CAUSAL_LM"`), or `None` for a
            plain `torch.nn.Module`.
        head_prefixes: parameter name prefixes of the task head (trained by
            `adapter.method = "head"` and saved beside every adapter).
        default_target_modules: LoRA targets when the config names none.
    """

    @property
    def name(self) -> str: ...

    @property
    def primary_metric(self) -> str: ...

    @property
    def peft_task_type(self) -> str | None: ...

    @property
    def head_prefixes(self) -> tuple[str, ...]: ...

    @property
    def default_target_modules(self) -> tuple[str, ...]: ...

    def load_examples(self) -> Examples:
        """Read (and tokenise) the examples; deterministic for the task's config."""
        ...

    def build_model(self, examples: Examples) -> torch.nn.Module:
        """The backbone plus a fresh head sized for `examples` (before any adapter)."""
        ...

    def batches(
        self,
        examples: Examples,
        indices: np.ndarray,
        batch_size: int,
        rng: np.random.Generator | None,
    ) -> Iterable[Batch]:
        """Cut `indices` into batches; `rng=None` gives a deterministic evaluation order."""
        ...

    def loss(self, module: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """Mean training loss of one batch (a scalar with a graph)."""
        ...

    def evaluate(
        self, module: torch.nn.Module, examples: Examples, indices: np.ndarray, batch_size: int
    ) -> dict[str, float]:
        """Metrics of `module` on `indices` under `inference_mode`, with `num_examples`."""
        ...
