"""The one staging transaction every whole-folder preparer uses: make it in a temp folder, swap it in, clean up.

A reader (or a process killed mid-way) sees the old folder or the new one, never a half-made one; a failure of
any kind (an error, Ctrl-C, a full disk) removes the temp folder and leaves the old copy as it was.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from clipctl.atomic import replace_dir


def stage_path(target: Path) -> Path:
    """The temp folder beside `target` this process stages it in (`.NAME.tmp-PID`: hidden, and never shared)."""
    target = Path(target)
    return target.parent.resolve() / f".{target.name}.tmp-{os.getpid()}"


@contextmanager
def staged(target: Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `target`; when the block ends normally, swap it in as `target` atomically
    (the old `target` is removed only afterwards); when it raises anything, delete the temp folder and re-raise."""
    stage = stage_path(target)
    shutil.rmtree(stage, ignore_errors=True)  # a leftover of a killed process that had our pid
    stage.mkdir(parents=True)
    try:
        yield stage
        replace_dir(stage, stage.parent / Path(target).name)  # the parent resolved, `target` itself not followed
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
