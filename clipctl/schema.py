"""Strict recipe tables and their one-line errors: the validation ground every config model stands on.

Every table of a recipe (and of a tune recipe) is a `Section`: unknown keys and silent type coercion are
errors. `format_validation_error` turns pydantic's report into the one line users see, with a "did you
mean" for unknown keys. `tagged_union` makes a table whose model is picked by one of its keys among
models registered at run time (the `[loss]` table: `name` picks the loss's own model).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, SerializeAsAny, ValidationError, create_model


class Section(BaseModel):
    """Base of every recipe table: unknown keys and silent type coercion are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


def closest(word: str, choices: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The choice a typo most likely meant, if any is close enough."""
    hint = difflib.get_close_matches(word, list(choices), n=1, cutoff=cutoff)
    return hint[0] if hint else None


@dataclass(frozen=True)
class Variants:
    """Field metadata of a tagged union: the `tag` key of a table picks its model among `members()`, which are
    looked up at validation time so that a model registered later (a plugin's, a test's) is accepted too."""

    members: Callable[[], Mapping[str, type[BaseModel]]]
    tag: str
    default: str

    def pick(self, value: Any) -> Any:
        if not isinstance(value, dict):
            return value  # an instance, or a non-table the base model rejects
        chosen = value.get(self.tag, self.default)
        members = self.members()
        if not isinstance(chosen, str) or chosen not in members:
            # The same error as a Literal field: it names the value and every valid one, in registration order.
            probe = create_model("Tag", **{self.tag: (Literal[tuple(members)], ...)})  # type: ignore[call-overload]
            probe.model_validate({self.tag: chosen})
        return members[chosen].model_validate(value)


def tagged_union(
    base: type[BaseModel], members: Callable[[], Mapping[str, type[BaseModel]]], tag: str, default: str
) -> Any:
    """The annotation of a table whose model is chosen by its `tag` key; it serialises with all of the chosen
    model's keys (not only the base's)."""
    variants = Variants(members, tag, default)
    return Annotated[base, SerializeAsAny(), BeforeValidator(variants.pick), variants]


def known_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key a model accepts (a tagged union contributes the keys of all its members)."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        variants = next((m for m in field.metadata if isinstance(m, Variants)), None)
        annotation = field.annotation
        if variants is not None:
            nested = list(variants.members().values())
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = [annotation]
        else:
            nested = []
        for sub in nested:
            keys += [k for k in known_keys(sub, f"{prefix}{name}.") if k not in keys]
    return keys


def format_validation_error(source: str, err: ValidationError, known: list[str]) -> str:
    """pydantic's first error as one line naming the source, the key, the value and what was expected."""
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"])
    kind = first["type"]
    if kind == "extra_forbidden":
        hint = closest(key, known)
        if not hint:
            section = key.rsplit(".", 1)[0] if "." in key else ""
            siblings = (
                [k for k in known if k.startswith(section + ".")] if section else [k for k in known if "." not in k]
            )
            hint = closest(key, siblings, cutoff=0.0)
        suggestion = f"; did you mean {hint}?" if hint else ""
        return f"{source}: {key}: unknown key{suggestion}"
    message = first["msg"].removeprefix("Value error, ")
    if kind == "missing":
        return f"{source}: {key}: required key is missing"
    if "input" in first and not isinstance(first["input"], dict) and key:
        return f"{source}: {key} = {first['input']!r}: {message}"
    return f"{source}: {key + ': ' if key else ''}{message}"
