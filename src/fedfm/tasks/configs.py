"""Task names -> their config sections (`[task] name = ...`); pydantic only, no torch.

Each task owns its settings; the config's task union is generated from `TASKS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from fedfm.configbase import Section, by_name, tagged_union


class TextClassificationConfig(Section):
    """`text_classification`: a text model of the catalogue on a packaged text corpus."""

    name: Literal["text_classification"] = "text_classification"
    model: Literal["minilm", "tiny-bert"] = "minilm"
    dataset: Literal["rotten_tomatoes", "debates", "synthetic"] = "rotten_tomatoes"
    max_length: int = Field(64, ge=8, le=512)
    pretrained: bool = True


class DigitsConfig(Section):
    """`digits`: scikit-learn's 8x8 digits with a small MLP (random initialisation)."""

    name: Literal["digits"] = "digits"
    hidden: int = Field(64, ge=4, le=4096)


TASKS: dict[str, type[Section]] = by_name([TextClassificationConfig, DigitsConfig])
DEFAULT_TASK = "text_classification"

if TYPE_CHECKING:
    TaskField = TextClassificationConfig | DigitsConfig
else:  # pydantic: chosen by `name`, a `[task]` section without one is the default task
    TaskField = tagged_union(TASKS, DEFAULT_TASK)
