"""clipctl.run: the run-directory contract — status values a real run writes, reader against writer, the
claim and the torch files."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.trainkit import make_tiny_shapes, tiny_recipe

from clipctl.errors import ClipctlError, InterruptedRun, RunConflictError
from clipctl.recipe import load_recipe
from clipctl.run.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state
from clipctl.run.layout import RunDir, RunStatus
from clipctl.run.reader import (
    MetricsFollower,
    completed_summary,
    find_run_dirs,
    read_json,
    read_metrics,
    read_recipe,
    read_summary,
)
from clipctl.run.writer import RunClaim, append_metrics, build_meta, build_summary, start_run, write_summary
from clipctl.train.trainer import Progress, TrainOptions, train

QUICK = {"train.epochs": 1, "train.max_steps": 2}


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return make_tiny_shapes(tmp_path_factory.mktemp("data"))


def status_on_disk(run: RunDir) -> str:
    return json.loads(run.summary.read_text(encoding="utf-8"))["status"]


def test_status_values_are_the_strings_a_real_run_writes(shapes, tmp_path):
    assert [s.value for s in RunStatus] == ["completed", "failed", "interrupted", "running"]
    assert f"{RunStatus.FAILED}" == str(RunStatus.FAILED) == "failed" and json.dumps(RunStatus.RUNNING) == '"running"'
    seen: list[str] = []
    failing = RunDir(tmp_path / "f")

    def fail_at_second_update(step: int) -> None:
        seen.append(status_on_disk(failing))
        if step == 2:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        train(tiny_recipe(shapes, **QUICK), TrainOptions(out_dir=tmp_path, name="f", on_step=fail_at_second_update))
    assert seen == [RunStatus.RUNNING.value] * 2 and status_on_disk(failing) == RunStatus.FAILED.value
    with pytest.raises(InterruptedRun):
        train(tiny_recipe(shapes, **QUICK), TrainOptions(out_dir=tmp_path, name="i", stop_after_steps=1))
    assert status_on_disk(RunDir(tmp_path / "i")) == RunStatus.INTERRUPTED.value
    summary = train(tiny_recipe(shapes, **QUICK), TrainOptions(out_dir=tmp_path, name="i", resume="auto"))
    run = RunDir(tmp_path / "i")
    assert status_on_disk(run) == RunStatus.COMPLETED.value and completed_summary(run) == json.loads(
        json.dumps(summary)
    )
    recipe, problem = read_recipe(run.root)
    assert problem == "" and recipe is not None and recipe["run"]["name"] == "i"
    assert find_run_dirs([tmp_path]) == [failing.root.resolve(), run.root.resolve()]


def test_the_reader_reads_what_the_writer_wrote(tmp_path):
    recipe = load_recipe("quickstart", ["run.name=w"])
    run = RunDir(tmp_path / "w")
    start_run(run, recipe, build_meta(recipe, 1, "cpu", "no"), resumed_at=None)
    records = [
        {"type": "train", "epoch": 0, "step": 2, "loss": 1.5},
        {"type": "eval", "epoch": 0, "step": 2, "x": math.nan},
    ]
    for record in records:
        append_metrics(run, record)
    progress = Progress(
        epoch=1, step=2, best_epoch=0, best_metrics={"val/objective": 0.5}, samples_seen=64, train_seconds=2.0
    )
    write_summary(run, build_summary(RunStatus.RUNNING, recipe, progress, world_size=1, train_subset=None))
    assert read_json(run.meta, "meta.json")["end"] is None  # a running summary leaves the run open
    write_summary(
        run, build_summary(RunStatus.COMPLETED, recipe, progress, world_size=1, train_subset=None, test={"tr@1": 0.1})
    )

    assert read_metrics(run) == [records[0], {**records[1], "x": None}]  # NaN is stored as null
    summary, problem = read_summary(run.root)
    assert problem == "" and summary == completed_summary(run)
    assert (
        summary["status"] == RunStatus.COMPLETED
        and summary["samples_per_s"] == 32.0
        and summary["test"] == {"tr@1": 0.1}
    )
    meta = read_json(run.meta, "meta.json")
    assert meta["recipe_sha256"] == recipe.sha256() == summary["recipe_sha256"] and meta["end"] is not None
    assert read_recipe(run.root)[0] == recipe.to_dict()

    start_run(run, recipe, build_meta(recipe, 1, "cpu", "no"), resumed_at=(2, 0))  # resume at update 2, epoch 0
    assert read_metrics(run) == [records[0]] and read_json(run.meta, "meta.json")["resumed_at_step"] == 2
    assert read_json(run.meta, "meta.json")["start"] == meta["start"]


def test_torn_last_metrics_line_is_tolerated_and_said(tmp_path, capsys):
    run = RunDir(tmp_path)
    run.metrics.write_text('{"type": "train", "step": 2}\n{"type": "eval", "st')
    assert read_metrics(run) == [{"type": "train", "step": 2}]
    assert "torn last line" in capsys.readouterr().err
    run.metrics.write_text('{"type": "train", "step": 2}\nnot json\n{"type": "train", "step": 4}\n')
    with pytest.raises(ClipctlError) as info:
        read_metrics(run)
    assert info.value.exit_code == 5 and "line 2" in str(info.value)


def test_a_metrics_follower_reads_whole_lines_and_starts_over_on_a_rewrite(tmp_path):
    run = RunDir(tmp_path)
    follower = MetricsFollower(run.metrics)
    assert follower.read_new() == ([], False)
    run.metrics.write_text('{"step": 1}\n{"step": 2}\n{"st')
    assert follower.read_new() == ([{"step": 1}, {"step": 2}], True)
    assert follower.read_new() == ([], False)  # the half line waits for its end
    run.metrics.write_text('{"step": 1}\n')  # a resumed trainer rewrote the log shorter
    assert follower.read_new() == ([{"step": 1}], True)


def test_a_second_process_cannot_claim_a_run_the_first_holds(tmp_path):
    run = RunDir(tmp_path / "held")
    claim = RunClaim(run).acquire()
    second = (
        "import sys; from pathlib import Path; from clipctl.run.layout import RunDir; "
        "from clipctl.run.writer import RunClaim; from clipctl.errors import RunConflictError\n"
        "try: RunClaim(RunDir(Path(sys.argv[1]))).acquire()\n"
        "except RunConflictError as err: sys.exit(err.exit_code)"
    )
    try:
        assert (
            subprocess.run([sys.executable, "-c", second, str(run.root)], timeout=120).returncode
            == RunConflictError("").exit_code
        )
    finally:
        claim.release(failed_before_start=True)
    assert not run.root.exists()  # created by the claim, nothing written: removed again
    RunClaim(run).acquire().release()  # free again once released
    assert run.root.is_dir()


def test_checkpoint_and_state_round_trip_with_their_format_tags(tmp_path):
    weights = {"w": torch.arange(3.0)}
    save_checkpoint(
        tmp_path / "ckpt.pt",
        model_state=weights,
        recipe_toml="",
        tokenizer_json="{}",
        tokenizer_max_len=8,
        metrics={"val/objective": 0.5},
        epoch=2,
    )
    ckpt = load_checkpoint(tmp_path / "ckpt.pt")
    assert torch.equal(ckpt["model"]["w"], weights["w"]) and ckpt["epoch"] == 2
    fields = {
        "recipe_sha256": "x",
        "recipe": {},
        "num_samples": 1,
        "model": weights,
        "optimizer": {},
        "scheduler": {},
        "scaler": {},
        "loss": {},
        "rng": [],
        "progress": {},
        "tokenizer_json": "{}",
        "subset_indices": None,
    }
    save_state(tmp_path / "state" / "last.pt", fields)
    assert load_state(tmp_path / "state" / "last.pt")["num_samples"] == 1
    with pytest.raises(ClipctlError, match="not a clipctl checkpoint"):
        load_checkpoint(tmp_path / "state" / "last.pt")
