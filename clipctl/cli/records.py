"""Options that come from the dataset records rather than from a command's signature: `data fetch ID --NAME VALUE`
(the dataset's options model) and `eval --FLAG` (the benchmarks' shorthands).

Typer passes them through unparsed (`EXTRA_ARGS`) and `split_words` reads them; `table_help` lists them under
`--help`. The records are imported only when such a command runs or shows its help, so every other command starts
without importing the dataset families.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from typer.core import TyperCommand

from clipctl.errors import UsageError

EXTRA_ARGS: dict[str, Any] = {"ignore_unknown_options": True, "allow_extra_args": True}


def split_words(words: list[str], valued: bool) -> tuple[list[str], list[tuple[str, str]]]:
    """(positional words, [(option name, value)]) of what Typer left unparsed: `--name VALUE` or `--name=VALUE`
    when `valued`, a bare `--name` (value "") when not. Positional words may come before or after the options."""
    positional: list[str] = []
    options: list[tuple[str, str]] = []
    rest = iter(words)
    for word in rest:
        if not word.startswith("-") or word == "-":
            positional.append(word)
            continue
        name, eq, value = word.lstrip("-").partition("=")
        if valued and not eq:
            value = next(rest, "")
            if not value or value.startswith("--"):
                raise UsageError(f"{word}: needs a value ({word} VALUE)")
        elif not valued and eq:
            raise UsageError(f"{word}: takes no value; write --{name}")
        options.append((name, value))
    return positional, options


def table_help(render: Callable[[], str]) -> type[TyperCommand]:
    """A command class whose help ends with `render()`: the record-derived options, read only when help is shown."""

    class RecordHelp(TyperCommand):
        @property  # type: ignore[override]
        def epilog(self) -> str:
            return render()

        @epilog.setter
        def epilog(self, value: str | None) -> None:
            """Typer sets a static epilog at construction; this one is computed."""

    return RecordHelp
