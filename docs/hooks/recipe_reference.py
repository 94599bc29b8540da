"""MkDocs hook: the table of every recipe key, generated from the recipe's pydantic models at build time.

`docs/reference/recipes.md` holds the marker below; the hook replaces it with one table per recipe section (key,
type or choices, default, limits, and the comment beside the field in the source) and one table of the `[loss]`
keys with the losses that read each. A new key shows up in the next `mkdocs build` without touching the docs.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

MARKER = "<!-- recipe-keys -->"
RECIPES_PAGE = "reference/recipes.md"
LIMITS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker of the recipes page with the generated key tables."""
    if page.file.src_uri != RECIPES_PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{RECIPES_PAGE}: the marker {MARKER} is missing; the key tables have nowhere to go")
    repo_root = Path(config["config_file_path"]).resolve().parent
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    return markdown.replace(MARKER, render_recipe_keys())


def render_recipe_keys() -> str:
    """One table per `Recipe` section in the schema's order; `[loss]` lists every registered loss's keys."""
    from clipctl.losses.registry import loss_configs
    from clipctl.recipe import Recipe

    parts = []
    for section, field in Recipe.model_fields.items():
        parts.append(f"### [{section}]\n")
        if section == "loss":
            parts.append(_loss_table(loss_configs(), field.default_factory().name))
        else:
            parts.append(_section_table(field.annotation))
    return "\n".join(parts)


def _section_table(model: type[BaseModel]) -> str:
    comments = _field_comments(model)
    rows = ["| key | type | default | limits | note |", "|---|---|---|---|---|"]
    for name, field in model.model_fields.items():
        note = _cell(comments.get(name, ""))
        rows.append(f"| `{name}` | {_type(field.annotation)} | {_default(field)} | {_limits(field)} | {note} |")
    return "\n".join(rows) + "\n"


def _loss_table(configs: dict[str, type[BaseModel]], default_loss: str) -> str:
    """Each `[loss]` key once, with the losses that read it and their defaults (equal defaults shown once)."""
    keys: dict[str, dict[str, Any]] = {}
    comments: dict[str, str] = {}
    for loss, model in configs.items():
        comments = {**_field_comments(model), **comments}
        for name, field in model.model_fields.items():
            keys.setdefault(name, {})[loss] = field
    rows = ["| key | type | read by | default | limits | note |", "|---|---|---|---|---|---|"]
    names = " \\| ".join(f'`"{loss}"`' for loss in configs)
    rows.append(f"| `name` | {names} | every loss | `{_toml(default_loss)}` |  | the loss; the other keys follow it |")
    for name, by_loss in keys.items():
        if name == "name":
            continue
        first = next(iter(by_loss.values()))
        readers = "every loss" if len(by_loss) == len(configs) else ", ".join(by_loss)
        defaults = {loss: _default(field) for loss, field in by_loss.items()}
        if len(set(defaults.values())) == 1:
            default = next(iter(defaults.values()))
        else:
            default = "; ".join(f"{loss}: {value}" for loss, value in defaults.items())
        note = _cell(comments.get(name, ""))
        rows.append(f"| `{name}` | {_type(first.annotation)} | {readers} | {default} | {_limits(first)} | {note} |")
    return "\n".join(rows) + "\n"


def _field_comments(model: type[BaseModel]) -> dict[str, str]:
    """The comment on a field's line, or the comment lines right above it, in each class of the model's MRO."""
    comments: dict[str, str] = {}
    for cls in reversed([c for c in model.__mro__ if issubclass(c, BaseModel) and c is not BaseModel]):
        try:
            lines = inspect.getsource(cls).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            found = re.match(r"\s+(\w+)\s*:[^#]*?(?:#\s*(.*))?$", line)
            if found and found.group(1) in model.model_fields:
                text = found.group(2) or " ".join(above)
                if text:
                    comments[found.group(1)] = text
            above = []
    return comments


def _type(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        return " \\| ".join(f'`"{c}"`' if isinstance(c, str) else f"`{c}`" for c in choices)
    text = getattr(annotation, "__name__", None) if typing.get_origin(annotation) is None else None
    return _cell(text or str(annotation).replace("typing.", ""))


def _default(field: Any) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return "unset" if value is None else f"`{_toml(value)}`".replace("|", "\\|")


def _toml(value: Any) -> str:
    """A default as it is written in a recipe (TOML), not as Python prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _limits(field: Any) -> str:
    limits = []
    for item in field.metadata:
        for attr, sign in LIMITS.items():
            value = getattr(item, attr, None)
            if value is not None:
                limits.append(f"{sign} {value}")
    return ", ".join(limits)


def _cell(text: str) -> str:
    """Source comments as table text: pipes escaped, angle brackets shown, code spans kept."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
