"""The `clipctl` command line: one Typer app, one module per command group; it wires and renders only."""

from __future__ import annotations

import os
import signal
import sys
import threading
import traceback
from types import FrameType

import typer

from clipctl import __version__
from clipctl.cli import compare, data, doctor, embed, export, recipes, study, train, tune, zeroshot
from clipctl.cli import eval as eval_cli
from clipctl.errors import EXIT_INTERRUPTED, EXIT_RUNTIME, EXIT_USAGE, ClipctlError, os_error_message, shorten

app = typer.Typer(
    name="clipctl",
    help="Train, tune, evaluate and compare CLIP-style models with global contrastive losses.\n\n"
    "Example: clipctl recipes show isogclr_radam --resolved",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clipctl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Train, tune, evaluate and compare CLIP-style models with global contrastive losses."""


app.add_typer(recipes.app, name="recipes")
app.add_typer(data.app, name="data")
app.add_typer(tune.app, name="tune")
app.add_typer(study.app, name="study")
app.command("train")(train.train)
app.command("eval", context_settings=eval_cli.CONTEXT, cls=eval_cli.COMMAND_CLASS)(eval_cli.eval_command)
app.command("compare")(compare.compare)
app.command("export")(export.export_command)
app.command("embed")(embed.embed_command)
app.command("zeroshot")(zeroshot.zeroshot_command)
app.command("doctor")(doctor.doctor)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (which handles it itself), so start-up stops with a line, not 143."""


_stopped_by: list[str] = []  # the signal that stopped this command, for the line Typer's silent 130 lacks


def _terminated(signum: int, frame: FrameType | None) -> None:
    _stopped_by.append(signal.Signals(signum).name)
    raise Terminated(signal.Signals(signum).name)


def _fail(message: str, code: int) -> int:
    if os.environ.get("CLIPCTL_DEBUG"):
        traceback.print_exc()
    sys.stderr.write(f"clipctl: error: {shorten(message)}\n")
    sys.stderr.flush()
    return code


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and their exit code (CLIPCTL_DEBUG=1: traceback)."""
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if on_main_thread else None
    try:
        return _run(argv)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    _stopped_by.clear()
    try:
        result = app(args=argv, prog_name="clipctl", standalone_mode=False)
        if result == EXIT_INTERRUPTED:  # Typer turns a KeyboardInterrupt (Ctrl-C, or SIGTERM above) into a bare 130
            return _fail(f"interrupted by {(_stopped_by or ['SIGINT'])[-1]}", EXIT_INTERRUPTED)
        return result if isinstance(result, int) else 0
    except ClipctlError as err:
        return _fail(str(err), err.exit_code)
    except OSError as err:  # a write the library did not wrap: still one line naming the file and the cause
        return _fail(os_error_message(err), EXIT_RUNTIME)
    except typer.Exit as err:
        return err.exit_code
    except typer.TyperException as err:  # argument parsing: Typer prints its own usage message
        err.show()
        return getattr(err, "exit_code", EXIT_USAGE)
    except Terminated:
        return _fail("interrupted by SIGTERM", EXIT_INTERRUPTED)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted by SIGINT", EXIT_INTERRUPTED)
