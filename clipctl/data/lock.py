"""Datasets in use are not replaced: a run holds a shared lock on each dataset it reads for its whole life;
generating or fetching a dataset again takes the exclusive lock, and refuses while any run holds it.

Processes that make a dataset take turns (`one_maker`, a second lock file `<id>.make.lock`): the second one waits
for the first and then looks again, so two runs that need the same data started together share one copy
instead of the second finding the first one's exclusive lock and refusing. One lock cannot tell a maker
(to wait for) from a reader (to refuse): flock does not say who holds it.

Why a lock rather than one folder per generation setting: recipes, manifests and `resolve()` name a
dataset by id (`shapes:val`), so a second folder would need every reader to know the settings; and a
regenerated `shapes` with the same id under a live run is exactly the bug. Locks are `flock(2)` on
`<data root>/.locks/<id>.lock`, beside (never inside) the folder that gets replaced; the kernel drops them
when a process dies, so a killed run never leaves a dataset locked.
"""

from __future__ import annotations

import fcntl
import gc
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from clipctl.console import info
from clipctl.errors import DataError

POLL_S = 0.2


def lock_path(root: Path, dataset_id: str, kind: str = "") -> Path:
    """`<root>/.locks/<id>.lock` (readers and the replacer), `<id>.make.lock` with kind ".make" (makers' turns)."""
    return Path(root) / ".locks" / f"{dataset_id}{kind}.lock"


def _open(root: Path, dataset_id: str, kind: str = "") -> IO[bytes]:
    path = lock_path(root, dataset_id, kind)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a+b")
    except OSError as err:
        raise DataError(
            f"{path}: cannot create the dataset lock ({err.strerror or err}); is the data root "
            f"writable? choose another with CLIPCTL_DATA"
        ) from None


def _try(handle: IO[bytes], mode: int) -> bool:
    try:
        fcntl.flock(handle.fileno(), mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


@contextmanager
def replacing(root: Path, dataset_id: str, what: str) -> Iterator[None]:
    """Hold the exclusive lock while (re)making `dataset_id`; DataError (exit 3) when a run is reading it."""
    handle = _open(root, dataset_id)
    try:
        if not _try(handle, fcntl.LOCK_EX):
            gc.collect()  # a finished run of this same process whose lease was not collected yet
            if not _try(handle, fcntl.LOCK_EX):
                raise DataError(
                    f"{dataset_id}: in use under {root} by a running training or fetch "
                    f"({lock_path(root, dataset_id)}); {what} would replace it, so nothing was changed; "
                    f"wait for that run to finish, or use another data root (CLIPCTL_DATA or data.root)"
                )
        yield
    finally:
        handle.close()


@contextmanager
def one_maker(root: Path, dataset_id: str, wait_s: float = 600.0) -> Iterator[None]:
    """Be the only process (re)making `dataset_id`: waits up to `wait_s` for another one to finish. Inside,
    look again whether the data is now there before making it (`replacing` then guards the readers)."""
    handle = _open(root, dataset_id, ".make")
    try:
        if not _try(handle, fcntl.LOCK_EX):
            info(f"{dataset_id}: another process is making it under {root}; waiting for it to finish")
            deadline = time.monotonic() + wait_s
            while not _try(handle, fcntl.LOCK_EX):
                if time.monotonic() > deadline:
                    raise DataError(
                        f"{dataset_id}: another process has been making it under {root} for over {wait_s:.0f} s "
                        f"({lock_path(root, dataset_id, '.make')}); run again when it has finished"
                    )
                time.sleep(POLL_S)
        yield
    finally:
        handle.close()


class DatasetLease:
    """Shared locks on the datasets a run reads, held until `release()` (or the process ends).

    Waits up to `wait_s` for a dataset that is being generated or fetched right now."""

    def __init__(self, root: Path, dataset_ids: Iterable[str], wait_s: float = 600.0) -> None:
        self.root = Path(root)
        self._handles: list[IO[bytes]] = []
        try:
            for dataset_id in sorted(set(dataset_ids)):
                self._handles.append(self._shared(dataset_id, wait_s))
        except BaseException:
            self.release()
            raise

    def _shared(self, dataset_id: str, wait_s: float) -> IO[bytes]:
        handle = _open(self.root, dataset_id)
        deadline = time.monotonic() + wait_s
        while not _try(handle, fcntl.LOCK_SH):
            if time.monotonic() > deadline:
                handle.close()
                raise DataError(
                    f"{dataset_id}: still being generated or fetched under {self.root} after "
                    f"{wait_s:.0f} s ({lock_path(self.root, dataset_id)}); run again when it has finished"
                )
            time.sleep(POLL_S)
        return handle

    def release(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

    @property
    def held(self) -> int:
        return len(self._handles)
