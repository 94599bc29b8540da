"""Training on WebDataset shards where they live: the same shards from a folder, a brace pattern, `pipe:cat`, an HTTP
server on 127.0.0.1 and an fsspec URL train to the same state; a streamed run cut mid-epoch resumes bit-identical;
two img2dataset runs in one folder train; a changed shard list is refused on resume (exit 5); no count table or a
bad source is one line (exit 3)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import fsspec
import pytest
import torch
from helpers import data_server
from helpers.output import assert_ends_in_one_error_line, assert_one_error_line
from helpers.shards import shapes_shards
from helpers.trainkit import ONE, make_tiny_shapes, stable_metrics, state_tensors, tiny_overrides, tiny_recipe

from clipctl.data.shardindex import build_index
from clipctl.data.shards import expand_source
from clipctl.data.streaming import StreamPlan
from clipctl.errors import InterruptedRun
from clipctl.losses import build_loss
from clipctl.run.checkpoint import load_state
from clipctl.train.trainer import TrainOptions, train

NAMES = [f"{i:05d}.tar" for i in range(8)]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def shards(shapes, tmp_path_factory) -> Path:
    """The 256 tiny shapes pairs as 8 shards of 32, with img2dataset's `_stats.json` beside each."""
    folder = tmp_path_factory.mktemp("shards")
    shapes_shards(shapes, folder, 32)
    return folder


def run(shapes: Path, out: Path, name: str, source: str = "", resume=None, stop_after=None, **extra) -> dict:
    recipe = tiny_recipe(shapes, **({"data.train": source} if source else {}), **extra)
    return train(recipe, TrainOptions(out_dir=out, name=name, resume=resume, stop_after_steps=stop_after))


def files_but_the_log(run_dir: Path) -> dict[str, int]:
    """Every file's mtime, train.log aside: a refused resume appends its error line there and touches nothing else."""
    return {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.name != "train.log"}


def assert_same_state(a: Path, b: Path) -> None:
    one, two = load_state(a / "state" / "last.pt"), load_state(b / "state" / "last.pt")
    for key, tensor in one["model"].items():
        assert torch.equal(tensor, two["model"][key]), key
    loss_a, loss_b = state_tensors(one["loss"]), state_tensors(two["loss"])
    assert loss_a and loss_a.keys() == loss_b.keys()
    for key, value in loss_a.items():
        assert torch.equal(value, loss_b[key]), key


@pytest.mark.slow
def test_every_source_form_trains_to_the_same_state(shapes, shards, tmp_path, data_root):
    files = {f"/{p.name}": p.read_bytes() for p in shards.iterdir() if p.is_file()}
    server = data_server.FileServer(files=files)
    httpd, _ = data_server.start(server)
    for path, content in files.items():
        with fsspec.open(f"memory://train{path}", "wb") as sink:
            sink.write(content)
    sources = {
        "folder": str(shards),
        "brace": f"{shards}/{{00000..00007}}.tar",
        "pipe": "::".join(f"pipe:cat {shards}/{n}" for n in NAMES),
        "http": f"{server.url}/{{00000..00007}}.tar",
        "fsspec": "memory://train/{00000..00007}.tar",
    }
    build_index(expand_source(sources["pipe"]), data_root)  # a command has no stats beside it: index it once
    try:
        summaries = {
            name: run(shapes, tmp_path, name, source, **ONE, **{"data.reader": "stream"})
            for name, source in sources.items()
        }
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert {s["sample_identity"] for s in summaries.values()} == {summaries["folder"]["sample_identity"]}
    assert all(s["status"] == "completed" and s["steps"] == 8 for s in summaries.values())
    for name in list(sources)[1:]:
        assert_same_state(tmp_path / "folder", tmp_path / name)
    assert any(path == "/00000_stats.json" for path, _ in server.log)  # the counts came from img2dataset's stats


@pytest.mark.slow
def test_a_streamed_run_cut_mid_epoch_resumes_bit_identical(shapes, shards, tmp_path):
    source, extra = f"{shards}/{{00000..00007}}.tar", {"data.num_workers": 2}
    run(shapes, tmp_path, "straight", source, **extra)
    with pytest.raises(InterruptedRun):
        run(shapes, tmp_path, "cut", source, stop_after=5, **extra)  # mid-epoch 0, between the workers' batches
    patient = {"data.shard_timeout_s": 120, "data.shard_retries": 5}  # how shards are waited for changes no result
    resumed = run(shapes, tmp_path, "cut", source, resume="auto", **extra, **patient)
    assert resumed["status"] == "completed" and resumed["steps"] == 16
    assert_same_state(tmp_path / "straight", tmp_path / "cut")
    assert stable_metrics(tmp_path / "straight") == stable_metrics(tmp_path / "cut")


@pytest.mark.slow
def test_a_streamed_run_refuses_another_loader_worker_count_on_resume(shapes, shards, tmp_path, run_cli, capsys):
    """Shards are dealt to processes x loader workers: unlike a map-style run, the count changes the batches."""
    extra = {"data.reader": "stream", "data.num_workers": 2}
    with pytest.raises(InterruptedRun):
        run(shapes, tmp_path, "w", str(shards), stop_after=2, **extra)
    capsys.readouterr()
    listing, log = files_but_the_log(tmp_path / "w"), (tmp_path / "w" / "train.log").read_text()
    overrides = tiny_overrides(shapes, **{"data.train": str(shards), **extra, "data.num_workers": 1})
    code, _, err = run_cli("train", "quickstart", *overrides, "--out", tmp_path, "--name", "w", "--resume", "auto")
    assert code == 5
    assert_one_error_line(err)
    assert "data.num_workers: state 2 vs recipe 1" in err and "set data.num_workers = 2" in err
    assert files_but_the_log(tmp_path / "w") == listing
    assert (tmp_path / "w" / "train.log").read_text().startswith(log)


@pytest.mark.slow
def test_two_img2dataset_runs_in_one_folder_train(shapes, shards, tmp_path):
    """Two runs side by side repeat the same keys (img2dataset numbers each run from 0): keys number nothing."""
    folder = tmp_path / "laion"
    for run_name, part in (("run1", NAMES[:4]), ("run2", NAMES[4:])):
        (folder / run_name).mkdir(parents=True)
        for k, name in enumerate(part):
            shutil.copy(shards / name, folder / run_name / f"{k:05d}.tar")
            shutil.copy(shards / name.replace(".tar", "_stats.json"), folder / run_name / f"{k:05d}_stats.json")
    summary = run(shapes, tmp_path, "two", str(folder), **ONE)
    assert summary["status"] == "completed" and summary["steps"] == 8


@pytest.mark.slow
def test_a_changed_shard_list_is_refused_on_resume(shapes, shards, tmp_path, run_cli, capsys):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    extra = {"data.train": str(data), "data.reader": "stream"}
    with pytest.raises(InterruptedRun):
        run(shapes, tmp_path, "r", str(data), stop_after=2, **{"data.reader": "stream"})
    (data / "00007.tar").unlink()
    (data / "00007_stats.json").unlink()
    capsys.readouterr()  # what the first run printed
    listing, log = files_but_the_log(tmp_path / "r"), (tmp_path / "r" / "train.log").read_text()
    args = ["train", "quickstart", *tiny_overrides(shapes, **extra), "--out", tmp_path, "--name", "r"]
    code, _, err = run_cli(*args, "--resume", "auto")
    assert code == 5
    assert_one_error_line(err)
    assert "the training pairs changed since the state was saved" in err
    assert files_but_the_log(tmp_path / "r") == listing
    assert (tmp_path / "r" / "train.log").read_text().startswith(log)


def test_shards_without_counts_or_a_bad_source_are_one_line(shapes, shards, tmp_path, run_cli):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in NAMES[:2]:
        shutil.copy(shards / name, bare / name)
    base = ["train", "quickstart", "--out", tmp_path / "runs"]
    code, _, err = run_cli(*base, *tiny_overrides(shapes, **{"data.train": f"{bare}/{{00000..00001}}.tar"}))
    assert code == 3
    assert_one_error_line(err)
    assert "no sample counts for 2 of 2 shards" in err and "clipctl data index" in err
    code, _, err = run_cli(*base, *tiny_overrides(shapes, **{"data.train": f"{bare}/{{00000..00009}}.tar"}))
    assert code == 3
    assert_one_error_line(err)
    assert "00002.tar" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    pattern = {"data.train": f"{bare}/{{00000..00001}}.tar", "data.reader": "map"}
    code, _, err = run_cli(*base, *tiny_overrides(shapes, **pattern))
    assert code == 2
    assert_one_error_line(err)
    assert 'data.reader = "map" reads a flat local folder' in err


@pytest.mark.slow
def test_two_processes_with_two_loader_workers_stream_every_sample(shapes, shards, tmp_path):
    """torchrun, gloo, CPU: 2 ranks x 2 loader workers read disjoint shards (every sample once per epoch: see
    tests/data/test_data_streaming.py), take the same number of steps, and every sample's loss state is updated."""
    extra = {"data.train": f"{shards}/{{00000..00007}}.tar", "data.num_workers": 2, **ONE}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "clipctl"]
    command += ["train", "quickstart", *tiny_overrides(shapes, **extra), "--out", str(tmp_path), "--name", "two"]
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["steps"] == 8
    recipe = tiny_recipe(shapes, **extra)
    fresh = build_loss(recipe.loss, num_samples=256, total_epochs=1, embed_dim=recipe.model.embed_dim)
    before = state_tensors(fresh.state_dict())
    after = state_tensors(load_state(tmp_path / "two" / "state" / "last.pt")["loss"])
    per_sample = [key for key, value in after.items() if value.ndim and value.shape[0] == 256]
    assert per_sample
    for key in per_sample:
        changed = (after[key] != before[key]).reshape(256, -1).any(dim=1)
        assert bool(changed.all()), f"{key}: samples {torch.nonzero(~changed).flatten().tolist()[:8]} never trained"


@pytest.mark.slow
def test_a_shard_failing_over_http_is_skipped_and_counted_or_fails_the_run(shapes, shards, tmp_path, run_cli):
    files = {f"/{p.name}": p.read_bytes() for p in shards.iterdir() if p.is_file()}
    server = data_server.FileServer(files=files)
    httpd, _ = data_server.start(server)
    extra = {"data.train": f"{server.url}/{{00000..00007}}.tar", "data.shard_retries": 1, "data.shard_timeout_s": 30}
    mid_epoch = [{}] + [{"status": 500}] * 100  # the tokenizer's caption pass reads it; the epoch's reads fail
    try:
        server.script["/00003.tar"] = list(mid_epoch)
        skipped = run(shapes, tmp_path, "skip", **ONE, **extra)
        server.script["/00003.tar"] = list(mid_epoch)
        args = ["train", "quickstart", "--out", tmp_path, "--name", "fail"]
        failing = {**extra, **ONE, "data.on_bad_shard": "fail", "data.num_workers": 2}
        code, _, err = run_cli(*args, *tiny_overrides(shapes, **failing))
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert skipped["status"] == "completed" and skipped["skipped_shards"] == 1 and skipped["steps"] == 8
    assert code == 3
    assert_ends_in_one_error_line(err)
    assert "00003.tar: unreadable after 2 tries (OSError: HTTP 500)" in err and 'on_bad_shard = "skip"' in err
    assert json.loads((tmp_path / "fail" / "summary.json").read_text())["status"] == "failed"


def kill_once_saved(args: list[str], run_dir: Path, reached: Callable[[dict], bool], timeout_s: float) -> dict:
    """`clipctl ARGS` in its own process group, SIGKILLed whole (loader workers included) once its saved state's
    progress is `reached` (or after `timeout_s`); returns that saved state."""
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "clipctl", *args], env=env, start_new_session=True)
    state, deadline = run_dir / "state" / "last.pt", time.monotonic() + timeout_s
    while time.monotonic() < deadline and not (state.exists() and reached(load_state(state)["progress"])):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return load_state(state)


@pytest.mark.slow
def test_a_streamed_run_killed_mid_epoch_resumes_bit_identical(shapes, shards, tmp_path, run_cli):
    """SIGKILL to the whole process group (loader workers included) after a mid-epoch save; `--resume auto` ends
    where an uninterrupted run ends, bit for bit."""
    extra = {"data.train": f"{shards}/{{00000..00007}}.tar", "data.num_workers": 2, "train.save_every_steps": 1}
    run(shapes, tmp_path, "straight", **extra)
    args = ["train", "quickstart", *tiny_overrides(shapes, **extra), "--out", str(tmp_path), "--name", "killed"]
    saved = kill_once_saved(args, tmp_path / "killed", lambda progress: progress["step"] >= 3, 120)["progress"]
    assert 0 < saved["batch"] < 8 and saved["step"] < 16  # killed mid-epoch, with the run far from done
    code, _, err = run_cli(*args, "--resume", "auto")
    assert code == 0, err
    assert_same_state(tmp_path / "straight", tmp_path / "killed")


def failing_shard_server(shards: Path, shard: str, good_reads: int) -> tuple[data_server.FileServer, object]:
    """The shards over HTTP; `shard` answers its first `good_reads` requests (the tokenizer's caption passes), then
    500 to every read. (A 500 comes at once: the tests that use it keep a long `data.shard_timeout_s`, so that a
    loaded machine's slow stats reads at start-up are not mistaken for missing counts.)"""
    server = data_server.FileServer(files={f"/{p.name}": p.read_bytes() for p in shards.iterdir() if p.is_file()})
    server.script[f"/{shard}"] = [{}] * good_reads + [{"status": 500}] * 1000
    httpd, _ = data_server.start(server)
    return server, httpd


@pytest.mark.slow
def test_a_shard_skipped_by_another_process_is_counted_in_the_summary(shapes, shards, tmp_path):
    """torchrun, gloo: shard 3 is dealt to rank 1 (one reader per rank); the main process's summary counts it."""
    assert 3 in StreamPlan((32,) * 8, 2, 1, 16).slots[1]
    server, httpd = failing_shard_server(shards, "00003.tar", good_reads=2)  # both ranks train the tokenizer
    extra = {"data.train": f"{server.url}/{{00000..00007}}.tar", "data.shard_retries": 1, **ONE}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "clipctl"]
    command += ["train", "quickstart", *tiny_overrides(shapes, **extra, **{"data.shard_timeout_s": 30})]
    command += ["--out", str(tmp_path), "--name", "two"]
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["world_size"] == 2 and summary["steps"] == 8
    assert summary["skipped_shards"] == 1
    assert proc.stderr.count("warning: rank 1: ") == 1  # rank 1's console is quiet: its skip is still said
    assert "rank 1: " + f"{server.url}/00003.tar: unreadable after 2 tries" in proc.stderr


@pytest.mark.slow
def test_shards_skipped_before_a_kill_are_counted_after_the_resume(shapes, shards, tmp_path, run_cli):
    """Shard 3 fails in each of 3 epochs; SIGKILL after a save, `--resume auto`: the summary counts all 3 (what the
    state carried, and what the resumed run met)."""
    server, httpd = failing_shard_server(shards, "00003.tar", good_reads=1)
    extra = {"data.train": f"{server.url}/{{00000..00007}}.tar", "data.shard_retries": 1, "train.epochs": 3}
    args = ["train", "quickstart", *tiny_overrides(shapes, **extra, **{"data.shard_timeout_s": 30})]
    args += ["--out", str(tmp_path), "--name", "killed"]
    try:
        saved = kill_once_saved(args, tmp_path / "killed", lambda progress: progress["epoch"] >= 1, 300)
        assert 1 <= saved["progress"]["epoch"] < 3  # killed with the run unfinished
        assert saved["data_faults"] == {"skipped_shards": saved["progress"]["epoch"]}
        code, _, err = run_cli(*args, "--resume", "auto")
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert code == 0, err
    summary = json.loads((tmp_path / "killed" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == 24 and summary["skipped_shards"] == 3
