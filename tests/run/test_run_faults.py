"""Run-directory faults: claims, resume refusals, full and read-only disks, torn files, signals, one-line errors.

Each bad path asserts the exit code, a one-line message and that nothing already on disk was changed.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.output import assert_one_error_line, file_snapshot
from helpers.rundirs import make_run
from helpers.trainkit import ONE, stable_metrics, tiny_overrides, tiny_recipe, train_args

from clipctl.data.batch_plan import BatchPlan
from clipctl.errors import DataError, InterruptedRun, StorageError, UsageError
from clipctl.run.checkpoint import CKPT_FORMAT, FORMAT_VERSION, load_state
from clipctl.run.layout import RunDir
from clipctl.train import trainer as trainer_module
from clipctl.train.interrupt import REPEAT_WINDOW_S
from clipctl.train.trainer import TrainOptions, train

SAVE_2 = {**ONE, "train.save_every_steps": 2}


def interrupted(shapes: Path, out: Path, name: str, after: int = 3, **extra) -> RunDir:
    with pytest.raises(InterruptedRun):
        train(tiny_recipe(shapes, **extra), TrainOptions(out_dir=out, name=name, stop_after_steps=after))
    return RunDir(out / name)


def mount_tmpfs(path: Path, options: str) -> bool:
    """A small real file system for disk-full and read-only tests (needs root; False where not allowed)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    return done.returncode == 0


def unmount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True)


# ------------------------------------------------------------------------------------------- run directory
@pytest.mark.slow
def test_two_trainers_on_one_name_exactly_one_trains(shapes, tmp_path):
    args = [sys.executable, "-m", "clipctl", *train_args(shapes, tmp_path, "race")]
    env = {**os.environ, "NO_COLOR": "1"}
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 4], results
    loser = next(err for code, err in results if code == 4)
    assert "another clipctl process" in loser or "run directory exists" in loser
    assert_one_error_line(loser)
    steps = [r["step"] for r in stable_metrics(tmp_path / "race") if r["type"] == "train"]
    assert steps == sorted(set(steps))  # one run's records, not two interleaved
    assert json.loads((tmp_path / "race" / "summary.json").read_text())["status"] == "completed"


def test_changed_seed_is_refused_on_resume(shapes, tmp_path, run_cli, capsys):
    interrupted(shapes, tmp_path, "s", **ONE)
    capsys.readouterr()
    before = file_snapshot(tmp_path)
    changed = train_args(shapes, tmp_path, "s", **{"train.max_steps": 0, "run.seed": 7})
    code, _, err = run_cli(*changed, "--resume", "auto")
    assert code == 5 and "run.seed" in err
    assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before


def test_kill_right_after_the_epoch_eval_leaves_no_duplicate_record(shapes, straight, tmp_path, monkeypatch):
    original = trainer_module.Trainer.save_state

    def killed_after_eval(self):
        if self.progress.epoch == 1 and self.progress.batch == 0:  # the epoch's eval is logged, its state not yet
            raise KeyboardInterrupt  # stands for SIGKILL: nothing else runs
        original(self)

    monkeypatch.setattr(trainer_module.Trainer, "save_state", killed_after_eval)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_recipe(shapes, **ONE, **{"train.save_every_steps": 8}), TrainOptions(out_dir=tmp_path, name="k"))
    monkeypatch.setattr(trainer_module.Trainer, "save_state", original)
    assert load_state(tmp_path / "k" / "state" / "last.pt")["progress"]["step"] == 8
    train(
        tiny_recipe(shapes, **ONE, **{"train.save_every_steps": 8}),
        TrainOptions(out_dir=tmp_path, name="k", resume="auto"),
    )
    assert stable_metrics(tmp_path / "k") == stable_metrics(straight)


@pytest.mark.parametrize("warmup", ["3", "4.5", "inf"])
def test_warmup_not_shorter_than_training_names_both_keys(warmup, run_cli):
    code, _, err = run_cli("recipes", "validate", "quickstart", f"sched.warmup_epochs={warmup}")
    assert code == 2 and "sched.warmup_epochs" in err and "train.epochs (3)" in err
    assert_one_error_line(err)


# ------------------------------------------------------------------------------------------- storage
def test_disk_full_on_a_real_tmpfs_is_named_and_keeps_the_last_state(shapes, tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "size=48m"):
        pytest.skip("cannot mount a tmpfs here; test_disk_full_mid_append_... covers the patched writer")
    try:

        def fill(step: int) -> None:
            if step == 3:
                with open(disk / "filler", "wb") as handle:
                    try:
                        while True:
                            handle.write(b"\0" * (1 << 20))
                            handle.flush()
                    except OSError:
                        pass

        recipe = tiny_recipe(shapes, **SAVE_2)
        with pytest.raises(StorageError) as info:
            train(recipe, TrainOptions(out_dir=disk, name="full", on_step=fill))
        message = str(info.value)
        assert "disk full" in message and str(disk / "full") in message and "\n" not in message
        assert info.value.exit_code == 1
        assert load_state(disk / "full" / "state" / "last.pt")["progress"]["step"] == 2
        assert not list((disk / "full").rglob(".*.tmp"))
    finally:
        unmount(disk)


class FullDisk:
    """A file handle on a disk that fills up in the middle of the update-4 record."""

    def __init__(self, handle) -> None:
        self.handle = handle

    def write(self, text: str) -> int:
        if '"step": 4,' in text:
            self.handle.write(text[:21])  # the part that fitted
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.handle.write(text)

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc) -> None:
        self.handle.close()


def test_disk_full_mid_append_then_resume_truncates_the_torn_line(shapes, straight, tmp_path, monkeypatch):
    real_open = Path.open

    def full_disk_open(self, mode="r", *args, **kwargs):
        handle = real_open(self, mode, *args, **kwargs)
        return FullDisk(handle) if self.name == "metrics.jsonl" and mode == "a" else handle

    monkeypatch.setattr(Path, "open", full_disk_open)
    with pytest.raises(StorageError) as info:
        train(tiny_recipe(shapes, **SAVE_2), TrainOptions(out_dir=tmp_path, name="t"))
    assert "disk full" in str(info.value) and "metrics.jsonl" in str(info.value)
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["status"] == "failed"
    monkeypatch.setattr(Path, "open", real_open)
    torn = (tmp_path / "t" / "metrics.jsonl").read_text()
    assert not torn.endswith("\n") and torn.rsplit("\n", 1)[1].startswith("{")
    train(tiny_recipe(shapes, **SAVE_2), TrainOptions(out_dir=tmp_path, name="t", resume="auto"))
    assert stable_metrics(tmp_path / "t") == stable_metrics(straight)


def test_read_only_output_is_named(shapes, tmp_path, run_cli):
    ro = tmp_path / "ro"
    if not mount_tmpfs(ro, "ro,size=1m"):
        if os.geteuid() == 0:
            pytest.skip("root ignores permissions and cannot mount a read-only tmpfs here")
        ro.chmod(0o555)
    try:
        code, _, err = run_cli(*train_args(shapes, ro, "r"))
        assert code == 1 and ("read-only" in err or "permission denied" in err) and str(ro) in err
        assert_one_error_line(err)
        assert not list(ro.iterdir())
    finally:
        unmount(ro)


def test_bad_run_names_and_out_paths_are_usage_errors(shapes, tmp_path, run_cli):
    (tmp_path / "afile").write_text("x")
    before = file_snapshot(tmp_path)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "n" * 300))
    assert code == 2 and "--name" in err and "300 bytes" in err
    assert_one_error_line(err)
    code, _, err = run_cli(*train_args(shapes, tmp_path / "afile", "r"))
    assert code == 2 and "is a file" in err and "--out" in err
    assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_a_batch_plan_that_cannot_train_is_refused_before_anything_is_written(shapes, tmp_path, run_cli):
    """One pair per loss call (refused with the recipe), and a global batch larger than the training set (refused
    once the data is open): each names its quantity, and the claimed folder is given back."""
    code, _, err = run_cli(*train_args(shapes, tmp_path, "one", **{"train.batch_size": 2, "train.grad_accum": 2}))
    assert code == 2 and "the contrast batch train.batch_size / train.grad_accum = 2 / 2 = 1 pair" in err
    assert_one_error_line(err)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "big", **{"train.batch_size": 4096}))
    assert code == 2 and re.search(r"train\.batch_size = 4096 exceeds the \d+ training pairs", err)
    assert "lower train.batch_size to at most" in err
    assert_one_error_line(err)
    assert not (tmp_path / "one").exists() and not (tmp_path / "big").exists()


@pytest.mark.parametrize(("plan", "refused"), [(BatchPlan(8, 2, 4), True), (BatchPlan(8, 2, 2), False)])
def test_a_single_sample_micro_batch_is_refused_for_batchnorm_models(plan, refused):
    """Only more processes than half the contrast batch leave one sample per process (one process has >= 2)."""
    trainer_module._refuse_single_sample_batchnorm(torch.nn.Linear(4, 4), plan)  # no BatchNorm: any micro-batch
    if not refused:
        trainer_module._refuse_single_sample_batchnorm(torch.nn.BatchNorm1d(4), plan)
        return
    with pytest.raises(UsageError) as caught:
        trainer_module._refuse_single_sample_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(4)), plan)
    assert caught.value.exit_code == 2
    assert "the micro-batch train.batch_size / train.grad_accum / processes = 8 / 2 / 4 = 1 sample" in str(caught.value)
    assert "BatchNorm" in str(caught.value) and "raise train.batch_size or lower train.grad_accum" in str(caught.value)


def test_recipes_cp_into_a_missing_folder(tmp_path, run_cli):
    code, _, err = run_cli("recipes", "cp", "quickstart", tmp_path / "missing" / "my.toml")
    assert code == 2 and "no such folder" in err and str(tmp_path / "missing") in err
    assert_one_error_line(err)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("broken", ["missing", "wrong-type"])
def test_checkpoint_with_a_missing_or_mistyped_field(broken, tmp_path, run_cli):
    ckpt = {
        "format": CKPT_FORMAT,
        "version": FORMAT_VERSION,
        "model": {},
        "recipe_toml": "",
        "tokenizer_json": "{}",
        "tokenizer_max_len": 32,
        "metrics": {},
        "epoch": 0,
    }
    if broken == "missing":
        del ckpt["recipe_toml"]
    else:
        ckpt["epoch"] = "3"
    torch.save(ckpt, tmp_path / "ckpt.pt")
    code, _, err = run_cli("eval", tmp_path / "ckpt.pt", "--shapes")
    assert code == 2 and ("'recipe_toml'" in err if broken == "missing" else "'epoch' is a str, expected int" in err)
    assert_one_error_line(err)


def test_state_with_a_missing_field_refuses_resume(shapes, tmp_path, run_cli, capsys):
    run = interrupted(shapes, tmp_path, "f", **ONE)
    capsys.readouterr()
    state = torch.load(run.last_state, weights_only=True)
    del state["progress"]
    torch.save(state, run.last_state)
    before = file_snapshot(tmp_path)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "f", **{"train.max_steps": 0}), "--resume", "auto")
    assert code == 5 and "'progress'" in err
    assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before


def test_code_carrying_weights_in_a_text_model_folder(shapes, tmp_path, run_cli, monkeypatch):
    from transformers import DistilBertConfig

    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "text"
    DistilBertConfig(n_layers=1, dim=32, hidden_dim=64, n_heads=2, vocab_size=1000).save_pretrained(folder)
    torch.save({"weight": Exploit()}, folder / "pytorch_model.bin")
    code, _, err = run_cli(
        *train_args(
            shapes, tmp_path / "runs", "code", **{"model.text_model": str(folder), "model.text_pretrained": True}
        )
    )
    assert code == 2 and "refused" in err and str(folder) in err
    assert_one_error_line(err)
    assert not (tmp_path / "exploited").exists() and not (tmp_path / "runs" / "code").exists()


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'exploited'}",))


def test_torn_summary_and_meta_on_resume(shapes, straight, tmp_path, run_cli, capsys):
    run = interrupted(shapes, tmp_path, "torn", **ONE)
    run.summary.write_text('{"status": "runn')
    run.meta.write_text('{"versions": {')
    for stale in (run.state_dir / ".last.pt.k1ll3d.tmp", run.root / ".summary.json.k1ll3d.tmp"):
        stale.write_bytes(b"\0" * 1000)
    train(tiny_recipe(shapes, **ONE), TrainOptions(out_dir=tmp_path, name="torn", resume="auto"))
    assert json.loads(run.summary.read_text())["status"] == "completed" and json.loads(run.meta.read_text())["end"]
    assert not list(run.root.rglob(".*.tmp"))  # stale temps of earlier kills are removed at start
    assert stable_metrics(run.root) == stable_metrics(straight)
    shutil.rmtree(run.state_dir)
    run.summary.write_text('{"status": "compl')
    before = file_snapshot(tmp_path)
    capsys.readouterr()
    code, _, err = run_cli(*train_args(shapes, tmp_path, "torn", **{"train.max_steps": 0}), "--resume", "auto")
    assert code == 5 and "summary.json" in err and "torn" in err
    assert_one_error_line(err)
    assert file_snapshot(tmp_path) == before


# ------------------------------------------------------------------------------------------- signals
def test_double_ctrl_c_stops_at_once_and_leaves_the_summary_interrupted(shapes, tmp_path):
    def twice(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(REPEAT_WINDOW_S + 0.2)  # a person pressing again, not a launcher forwarding the first
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(InterruptedRun) as info:
        train(tiny_recipe(shapes, **SAVE_2), TrainOptions(out_dir=tmp_path, name="c", on_step=twice))
    assert "second SIGINT" in str(info.value) and info.value.exit_code == 130
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and "second SIGINT" in summary["error"]
    assert load_state(tmp_path / "c" / "state" / "last.pt")["progress"]["step"] == 2  # the last save, untouched


def test_a_signal_delivered_twice_at_once_is_one_stop_that_saves(shapes, tmp_path):
    """torchrun (or Slurm) forwards the SIGTERM its process group already delivered: every rank gets two."""

    def group_then_launcher(step: int) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(InterruptedRun) as info:
        train(tiny_recipe(shapes, **SAVE_2), TrainOptions(out_dir=tmp_path, name="d", on_step=group_then_launcher))
    assert "second" not in str(info.value) and "update 3; state saved" in str(info.value)
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["error"] == "stopped by SIGTERM at update 3"
    assert load_state(tmp_path / "d" / "state" / "last.pt")["progress"]["step"] == 3  # the update it finished


def test_sigterm_during_start_up_is_a_line_and_exit_130(shapes, tmp_path, run_cli, monkeypatch):
    def terminated(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends

    monkeypatch.setattr(trainer_module, "build_components", terminated)
    code, _, err = run_cli(*train_args(shapes, tmp_path, "early"))
    assert code == 130 and "SIGTERM" in err
    assert_one_error_line(err)
    assert not (tmp_path / "early").exists()


@pytest.mark.slow
def test_process_group_sigterm_with_a_loader_worker_resumes_bit_identically(shapes, straight, tmp_path):
    extra = {**ONE, "data.num_workers": 1, "data.persistent_workers": False}
    args = [
        sys.executable,
        "-m",
        "clipctl",
        "train",
        "quickstart",
        *tiny_overrides(shapes, **extra),
        "--out",
        str(tmp_path),
        "--name",
        "cut",
    ]
    proc = subprocess.Popen(
        args,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    metrics = tmp_path / "cut" / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.is_file() and metrics.read_text().count("\n") >= 1) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first train record (update 2) is written: the worker is loading batches
    os.killpg(proc.pid, signal.SIGTERM)  # what Slurm, systemd and docker stop do: the main process and its worker
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    assert "resume with --resume auto" in err and "Traceback" not in err
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["status"] == "interrupted" and 2 <= summary["steps"] < 8
    assert load_state(tmp_path / "cut" / "state" / "last.pt")["progress"]["step"] == summary["steps"]
    train(tiny_recipe(shapes, **extra), TrainOptions(out_dir=tmp_path, name="cut", resume="auto"))
    a, b = load_state(straight / "state" / "last.pt"), load_state(tmp_path / "cut" / "state" / "last.pt")
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    assert stable_metrics(straight) == stable_metrics(tmp_path / "cut")


# ------------------------------------------------------------------------------------------- messages
def test_a_worker_error_is_reduced_to_its_own_message():
    from torch._utils import ExceptionWrapper

    try:
        raise DataError('/data/x.png: not a decodable image; set data.on_bad_image = "skip" to skip it')
    except DataError:
        wrapped = ExceptionWrapper(where="in DataLoader worker process 0")
    with pytest.raises(DataError) as info:
        wrapped.reraise()  # what the main process does with a worker's exception
    assert str(info.value) == (
        'in a data loader worker: /data/x.png: not a decodable image; set data.on_bad_image = "skip" to skip it'
    )


def test_a_huge_value_is_cut_in_the_message(run_cli):
    code, _, err = run_cli("recipes", "validate", "quickstart", f'train.epochs="{"9" * 100_000}"')
    assert code == 2 and "train.epochs" in err and len(err) < 400 and "…" in err
    assert_one_error_line(err)


def test_a_fifo_named_metrics_jsonl_does_not_hang_compare(tmp_path):
    run = make_run(tmp_path / "runs", "fifo")
    (run / "metrics.jsonl").unlink()
    os.mkfifo(run / "metrics.jsonl")
    done = subprocess.run(
        [sys.executable, "-m", "clipctl", "compare", str(tmp_path / "runs"), "--plot", str(tmp_path / "c.png")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "not a regular file" in done.stderr and (tmp_path / "c.png").is_file()
