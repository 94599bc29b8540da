"""Datasets in use are not replaced: a run holds a shared lock on each dataset it reads for its whole life;
generating or fetching a dataset again takes the exclusive lock, and refuses while any run holds it.

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

from clipctl.errors import DataError

POLL_S = 0.2


def lock_path(root: Path, dataset_id: str) -> Path:
    return Path(root) / ".locks" / f"{dataset_id}.lock"


def _open(root: Path, dataset_id: str) -> IO[bytes]:
    path = lock_path(root, dataset_id)
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
