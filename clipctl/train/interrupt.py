"""SIGINT/SIGTERM handling: ask the loop to stop after the current update instead of dying mid-write.

A process-group signal (Slurm, systemd, `docker stop`, tune stopping a trial) reaches the loader workers
too; they ignore it (`clipctl.data.loader.loader_worker_init`, their worker_init_fn) so the main process
can finish.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from types import FrameType

from clipctl.data.loader import STOP_SIGNALS


class ForcedStop(KeyboardInterrupt):
    """A second stop signal: leave now, without finishing the update (no `except Exception` keeps going)."""

    def __init__(self, signal_name: str) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name


REPEAT_WINDOW_S = 1.0  # the same signal again within this is the same request, not a second one


class StopRequest:
    """Installs handlers for SIGINT and SIGTERM that set a flag; a second signal of either kind stops at once.

    The same signal again within REPEAT_WINDOW_S is not a second request: a launcher that forwards the
    signal its process group already delivered (torchrun, Slurm's step daemon) sends every rank two at
    once, and the ranks must still save.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal_name = ""
        self._requested_at = 0.0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        now = time.monotonic()
        if self.requested:
            if name == self.signal_name and now - self._requested_at < REPEAT_WINDOW_S:
                return
            sys.stderr.write(f"clipctl: second {name}: stopping now, without saving the current update\n")
            raise ForcedStop(name)
        self.requested, self.signal_name, self._requested_at = True, name, now
        sys.stderr.write(
            f"clipctl: {name}: finishing this update and saving state "
            f"(send it again after {REPEAT_WINDOW_S:g} s to stop at once)\n"
        )

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
