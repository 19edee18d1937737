"""Task config -> Task (the implementation modules are imported only when built)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedfm.tasks.base import Task
from fedfm.tasks.configs import (
    DigitsConfig,
    ImageClassificationConfig,
    InstructionConfig,
    TextClassificationConfig,
)

if TYPE_CHECKING:
    from fedfm.config import Config


def build_task(cfg: Config) -> Task:
    """The configured task; the subset size and its seed come from `data.max_examples` and
    the run's seed."""
    t = cfg.task
    if isinstance(t, TextClassificationConfig):
        from fedfm.tasks.text_classification import TextClassification

        return TextClassification(
            t.model, t.dataset, t.max_length, cfg.data.max_examples, cfg.seed, t.pretrained
        )
    if isinstance(t, DigitsConfig):
        from fedfm.tasks.digits import Digits

        return Digits(t.hidden, cfg.data.max_examples, cfg.seed)
    if isinstance(t, InstructionConfig):
        from fedfm.tasks.instruction import Instruction

        return Instruction(t, cfg.data.max_examples, cfg.seed)
    if isinstance(t, ImageClassificationConfig):
        from fedfm.tasks.image_classification import ImageClassification

        return ImageClassification(t, cfg.data.max_examples, cfg.seed)
    raise AssertionError(f"no builder for task {t.name!r}")  # the config union forbids this
