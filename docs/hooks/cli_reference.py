"""MkDocs hook: the CLI reference page is generated from the Typer app at build time, never written by hand.

`docs/reference/cli.md` holds a short introduction and the marker below; the hook replaces the marker with
every command's help, usage and options as Typer itself declares them, so a new or changed command shows up in
the next `mkdocs build` without touching the docs. It imports the checkout's `clipctl` (the folder above
`docs/`), not whichever copy happens to be installed.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
CLI_PAGE = "reference/cli.md"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Replace the marker of the CLI reference page with the generated reference."""
    if page.file.src_uri != CLI_PAGE:
        return markdown
    if MARKER not in markdown:
        raise ValueError(f"{CLI_PAGE}: the marker {MARKER} is missing; the generated reference has nowhere to go")
    repo_root = Path(config["config_file_path"]).resolve().parent
    return markdown.replace(MARKER, render_cli_reference(repo_root))


def render_cli_reference(repo_root: Path) -> str:
    """Markdown for every visible command of the clipctl Typer app, depth first, in the app's own order."""
    if str(repo_root) not in sys.path:
        sys.path.insert(0, str(repo_root))
    from clipctl.cli import app

    return render_app(app, "clipctl")


def render_app(app: Any, name: str) -> str:
    """Markdown for every visible command of a Typer app (the test feeds it an app of its own)."""
    import typer

    root = typer.main.get_command(app)
    sections = [_command_section(command, ctx, path) for command, ctx, path in _walk(root, [name], None)]
    return "\n".join(sections)


def _walk(command: Any, path: list[str], parent: Any) -> Iterator[tuple[Any, Any, list[str]]]:
    """Each visible command with its context and its words from `clipctl`, groups before their commands."""
    import typer

    ctx = typer.Context(command, info_name=path[-1], parent=parent)
    yield command, ctx, path
    if hasattr(command, "list_commands"):  # a group (Typer vendors click, so no isinstance check on click's class)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from _walk(sub, [*path, name], ctx)


def _command_section(command: Any, ctx: Any, path: list[str]) -> str:
    """One command: heading, help paragraphs, usage line, a table of its arguments and options, its epilog."""
    level = "#" * min(len(path) + 1, 4)
    parts = [f"{level} {' '.join(path)}", ""]
    if command.help:
        parts += [_paragraphs(command.help), ""]
    usage = " ".join([" ".join(path), *command.collect_usage_pieces(ctx)])
    parts += ["```text", usage, "```", ""]
    rows = [_param_row(param, ctx) for param in command.params if not getattr(param, "hidden", False)]
    rows = [row for row in rows if row]
    if rows:
        parts += ["| argument or option | description |", "|---|---|", *rows, ""]
    if hasattr(command, "list_commands"):
        names = [n for n in command.list_commands(ctx) if not command.get_command(ctx, n).hidden]
        parts += ["Commands: " + ", ".join(f"`{' '.join([*path, n])}`" for n in names), ""]
    if command.epilog:
        parts += [_paragraphs(command.epilog), ""]
    return "\n".join(parts)


def _param_row(param: Any, ctx: Any) -> str:
    """A table row from the parameter's own help record (its options, metavar, help, default and range)."""
    record = param.get_help_record(ctx)
    if record is None:  # click gives none for a hidden parameter
        return ""
    names, text = record
    return f"| `{names}` | {_escape(text, in_table=True)} |"


def _paragraphs(text: str) -> str:
    """Help text as Markdown paragraphs: blank lines stay paragraph breaks, the rest is escaped prose."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.replace("\b", "")) if p.strip()]
    return "\n\n".join(_escape(_example_as_code(p)) for p in paragraphs)


def _example_as_code(paragraph: str) -> str:
    """`Example: clipctl …` closing a paragraph (the app's convention) becomes a code span."""
    return re.sub(r"Example: (clipctl [^`]*)$", r"Example: `\1`", paragraph)


def _escape(text: str, in_table: bool = False) -> str:
    """Prose escaped for Markdown, keeping `code spans` as they are: help text is plain text, not Markdown."""
    pieces = re.split(r"(`[^`]+`)", text)
    out = []
    for i, piece in enumerate(pieces):
        if i % 2 == 1:  # a code span
            out.append(piece.replace("|", "\\|") if in_table else piece)
            continue
        piece = html.escape(piece, quote=False)
        piece = re.sub(r"([\\*_\[\]#])", r"\\\1", piece)
        out.append(piece.replace("|", "\\|") if in_table else piece)
    return "".join(out)
