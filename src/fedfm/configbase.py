"""The base of every config section, the base of pipeline stage entries and their kinds,
and tagged unions of sections built from one list."""

from __future__ import annotations

from collections.abc import Iterable
from enum import IntEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

if TYPE_CHECKING:
    from fedfm.pipeline import Stage

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A config section (`extra="forbid"`: an unknown key is an error naming the key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Role = Literal["quantiser", "sparsifier"] | None


class StageKind(IntEnum):
    """Where a stage may sit: kinds never decrease along a pipeline."""

    POISON = 0  # simulation-only attacks: what a malicious client would send
    CLIP = 1
    NOISE = 2
    COMPRESS = 3
    MASK = 4


class StageConfigBase(Section):
    """A stage's settings; `build` makes the stage. `kind` and `role` drive the checks."""

    kind: ClassVar[StageKind] = StageKind.COMPRESS
    role: ClassVar[Role] = None

    def build(self) -> Stage:
        """The stage."""
        raise NotImplementedError


def by_name(classes: Iterable[type[S]]) -> dict[str, type[S]]:
    """Section classes keyed by their `name` literal (the one place a name is written)."""
    return {str(cls.model_fields["name"].default): cls for cls in classes}


def tagged_union(registry: dict[str, type[S]], default: str | None = None) -> Any:
    """A pydantic union of the sections in `registry`, chosen by their `name` key.

    Args:
        registry: name -> section class (see `by_name`).
        default: the name a section without `name` gets (`None`: `name` is required).
    """

    def pick(value: Any) -> str | None:
        if isinstance(value, dict):
            return value.get("name", default)
        return getattr(value, "name", default)

    members = tuple(Annotated[cls, Tag(name)] for name, cls in registry.items())
    return Annotated[Union[members], Discriminator(pick)]  # noqa: UP007
