"""Loader workers never keep a failed run's process alive: they ignore SIGTERM (a process-group stop is the
trainer's to handle), so neither torch's shutdown nor multiprocessing's exit could end them; the trainer
must still exit with the error's code within seconds, leaving no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers.output import assert_ends_in_one_error_line
from helpers.trainkit import make_tiny_shapes, tiny_overrides

from clipctl.errors import EXIT_DATA
from clipctl.run.layout import RunDir

EXIT_WITHIN_S = 20.0  # after the failed summary is written; a hung worker used to make this forever
START_WITHIN_S = 300.0  # start-up on a loaded CI machine

# Worker 0 fails every sample; worker 1 is stuck in its first one (a read that never returns).
HUNG_WORKER = textwrap.dedent(
    """
    import sys, time
    import torch.utils.data
    from clipctl.data import datasets
    from clipctl.errors import DataError

    def item(self, key):
        if torch.utils.data.get_worker_info().id == 1:
            time.sleep(3600)
        raise DataError("injected.png: unreadable image (injected)")

    datasets.PairsDataset.__getitem__ = item
    from clipctl.cli import main
    raise SystemExit(main(sys.argv[1:]))
    """
)

# One loader used up and dropped (its workers ended by torch), one still held with a live iterator at exit
# (its workers still waiting for work): the process must end at once either way.
FINISHED_AND_LIVE_LOADERS = textwrap.dedent(
    """
    import torch
    from clipctl.data.batch_plan import BatchPlan
    from clipctl.data.loader import build_train_loader

    class Numbers(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, key):
            return torch.tensor(key[0])

    used_up = build_train_loader(Numbers(), BatchPlan(8), num_workers=2)
    assert sorted(int(i) for batch in used_up for i in batch) == list(range(64))
    del used_up
    live = build_train_loader(Numbers(), BatchPlan(8), num_workers=2, persistent_workers=True)
    batches = iter(live)
    next(batches)
    """
)


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_tiny_shapes(tmp_path / "data")


def start(command: list[str], shapes: Path, out: Path, workers: int) -> subprocess.Popen:
    extra = {"train.epochs": 1, "data.num_workers": workers, "data.on_bad_image": "error"}
    args = ["train", "quickstart", *tiny_overrides(shapes, **extra), "--out", str(out), "--name", "w"]
    return subprocess.Popen(
        [*command, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the workers can be found, and killed if the test fails
        env={**os.environ, "NO_COLOR": "1"},
    )


def failed_and_exited(proc: subprocess.Popen, run: RunDir) -> tuple[str, float]:
    """(stderr, seconds from the failed summary to the exit); the whole group is killed when it hangs."""
    try:
        deadline = time.monotonic() + START_WITHIN_S
        while not _failed(run) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        failed_at = time.monotonic()
        _, err = proc.communicate(timeout=EXIT_WITHIN_S)
        return err, time.monotonic() - failed_at
    except subprocess.TimeoutExpired:
        pytest.fail(f"the trainer did not exit within {EXIT_WITHIN_S} s of its failed summary")
    finally:
        _kill_group(proc.pid)


def _failed(run: RunDir) -> bool:
    try:
        return json.loads(run.summary.read_text())["status"] == "failed"
    except (OSError, ValueError, KeyError):
        return False


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_is_gone(pgid: int, within_s: float = 5.0) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


def test_a_process_with_finished_or_live_loaders_exits_at_once(tmp_path):
    script = tmp_path / "loaders.py"
    script.write_text(FINISHED_AND_LIVE_LOADERS)
    proc = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a process whose loaders had workers did not exit")
    finally:
        _kill_group(proc.pid)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert group_is_gone(proc.pid)


@pytest.mark.slow
def test_a_worker_that_raises_ends_the_run_with_its_code(shapes, tmp_path):
    bad = shapes / "train" / "000005.png"
    bad.write_bytes(bad.read_bytes()[:200])  # the header parses; the pixels are cut off
    proc = start([sys.executable, "-m", "clipctl"], shapes, tmp_path, workers=1)
    run = RunDir(tmp_path / "w")
    err, seconds = failed_and_exited(proc, run)
    assert proc.returncode == EXIT_DATA, err
    assert seconds < EXIT_WITHIN_S and group_is_gone(proc.pid)
    assert_ends_in_one_error_line(err)
    assert f"in a data loader worker: {bad}: unreadable image" in err
    summary = json.loads(run.summary.read_text())
    assert summary["status"] == "failed" and str(bad) in summary["error"]
    assert not run.last_state.exists()  # failed inside the first epoch, before any save


@pytest.mark.slow
def test_a_hung_worker_does_not_keep_a_failed_run_alive(shapes, tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(HUNG_WORKER)
    proc = start([sys.executable, str(driver)], shapes, tmp_path, workers=2)
    run = RunDir(tmp_path / "w")
    err, seconds = failed_and_exited(proc, run)
    assert proc.returncode == EXIT_DATA, err
    assert seconds < EXIT_WITHIN_S
    assert group_is_gone(proc.pid)  # the stuck worker too, though it ignores SIGTERM
    assert_ends_in_one_error_line(err)
    assert "in a data loader worker: injected.png: unreadable image (injected)" in err
    assert json.loads(run.summary.read_text())["status"] == "failed"
