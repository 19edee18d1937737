"""The base of every config section, and tagged unions of sections built from one list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Tag

S = TypeVar("S", bound="Section")


class Section(BaseModel):
    """A config section (`extra="forbid"`: an unknown key is an error naming the key)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


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
