"""Task names -> their config sections (`[task] name = ...`); pydantic only, no torch.

Each task owns its settings; the config's task union is generated from `TASKS`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag

from fedfm.configbase import Section


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


TaskConfig = TextClassificationConfig | DigitsConfig
TASKS: dict[str, type[TextClassificationConfig] | type[DigitsConfig]] = {
    cls.model_fields["name"].default: cls for cls in (TextClassificationConfig, DigitsConfig)
}
DEFAULT_TASK = "text_classification"


def _task_name(value: Any) -> str:
    """The task's name; a `[task]` section without one is the default task."""
    if isinstance(value, dict):
        return str(value.get("name", DEFAULT_TASK))
    return str(getattr(value, "name", DEFAULT_TASK))


def _tag(cls: type[Section]) -> Tag:
    return Tag(cls.model_fields["name"].default)


TaskField = Annotated[
    Annotated[TextClassificationConfig, _tag(TextClassificationConfig)]
    | Annotated[DigitsConfig, _tag(DigitsConfig)],
    Discriminator(_task_name),
]
