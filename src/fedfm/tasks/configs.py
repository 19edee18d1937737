"""Task names -> their config sections (`[task] name = ...`); pydantic only, no torch.

Each task owns its settings; the config's task union is generated from `TASKS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import Field

from fedfm.configbase import Section, by_name, tagged_union


class TextClassificationConfig(Section):
    """`text_classification`: a text model of the catalogue on a packaged text corpus."""

    primary_metric: ClassVar[str] = "accuracy"  # what the loop, summary and report lead with
    name: Literal["text_classification"] = "text_classification"
    model: Literal["minilm", "tiny-bert"] = "minilm"
    dataset: Literal["rotten_tomatoes", "debates", "synthetic"] = "rotten_tomatoes"
    max_length: int = Field(64, ge=8, le=512)
    pretrained: bool = True


class DigitsConfig(Section):
    """`digits`: scikit-learn's 8x8 digits with a small MLP (random initialisation)."""

    primary_metric: ClassVar[str] = "accuracy"
    name: Literal["digits"] = "digits"
    hidden: int = Field(64, ge=4, le=4096)


InstructionCategory = Literal[
    "sentiment", "debate_party", "debate_speaker", "hamlet", "hamlet_speaker"
]
INSTRUCTION_CATEGORIES: tuple[InstructionCategory, ...] = (
    "sentiment",
    "debate_party",
    "debate_speaker",
    "hamlet",
    "hamlet_speaker",
)


class InstructionConfig(Section):
    """`instruction`: instruction tuning of a causal LM on templated tasks from the corpora."""

    primary_metric: ClassVar[str] = "exact_match"
    name: Literal["instruction"] = "instruction"
    model: Literal["smollm2-135m", "tiny-llama"] = "smollm2-135m"
    categories: list[InstructionCategory] = Field(
        default_factory=lambda: list(INSTRUCTION_CATEGORIES), min_length=1
    )
    per_category: int = Field(400, ge=10)  # examples built per category (before splits)
    max_length: int = Field(128, ge=16, le=2048)  # prompt + response tokens
    max_new_tokens: int = Field(8, ge=1, le=256)  # cap of evaluation's greedy generation
    generate_eval: int = Field(200, ge=0)  # held-out examples answered by generation (0: none)
    pretrained: bool = True
    gradient_checkpointing: bool = False


class ImageClassificationConfig(Section):
    """`image_classification`: a vision model of the catalogue on a packaged image set."""

    primary_metric: ClassVar[str] = "accuracy"
    name: Literal["image_classification"] = "image_classification"
    model: Literal["efficientnet-lite0", "tiny-cnn"] = "efficientnet-lite0"
    dataset: Literal["fashion_mnist", "mnist_5k"] = "fashion_mnist"
    image_size: int = Field(32, ge=16, le=512)  # 28x28 sets: 32 measured best per second
    pretrained: bool = True


TASKS: dict[str, type[Section]] = by_name(
    [TextClassificationConfig, DigitsConfig, InstructionConfig, ImageClassificationConfig]
)
DEFAULT_TASK = "text_classification"


def primary_metric(task_name: str | None) -> str:
    """The primary metric of a task by name (`accuracy` for an unknown or missing name)."""
    section = TASKS.get(task_name or DEFAULT_TASK)
    return str(getattr(section, "primary_metric", "accuracy"))


if TYPE_CHECKING:
    TaskField = (
        TextClassificationConfig | DigitsConfig | InstructionConfig | ImageClassificationConfig
    )
else:  # pydantic: chosen by `name`, a `[task]` section without one is the default task
    TaskField = tagged_union(TASKS, DEFAULT_TASK)
