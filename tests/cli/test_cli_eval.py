"""`clipctl eval` on a real (briefly trained) checkpoint, and its bad-input paths."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.trainkit import TINY_SHAPES, make_tiny_shapes, tiny_recipe

from clipctl.train.trainer import TrainOptions, train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model trained for a few updates; its data root holds shapes with a manifest."""
    root = tmp_path_factory.mktemp("evaldata")
    shapes = make_tiny_shapes(root, TINY_SHAPES)
    runs = tmp_path_factory.mktemp("runs")
    train(tiny_recipe(shapes, **{"train.epochs": 1, "train.max_steps": 3}), TrainOptions(out_dir=runs, name="r"))
    return runs / "r" / "ckpt.pt", root


def test_eval_shapes_writes_json_beside_checkpoint(trained, run_cli, monkeypatch):
    ckpt, root = trained
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    code, out, err = run_cli("eval", ckpt, "--shapes", "--json")
    assert code == 0, err
    result = json.loads(out)["shapes"]
    assert set(result) >= {
        "tr@1",
        "tr@5",
        "tr@10",
        "ir@1",
        "ir@5",
        "ir@10",
        "acc@1",
        "acc@5",
        "objective",
        "images_per_s",
    }
    assert result["objective"] == pytest.approx((result["tr@1"] + result["ir@1"] + result["acc@1"]) / 3)
    written = json.loads((ckpt.parent / "eval" / "shapes.json").read_text())
    assert written["tr@1"] == result["tr@1"]
    code, _, err = run_cli("eval", ckpt, "--shapes")
    assert code == 0 and "TR@1" in err and "images/s" in err


def test_epoch_checkpoints_of_one_folder_keep_their_own_results(trained, run_cli, monkeypatch, tmp_path):
    """`checkpoints/epoch_N.pt` share a folder: each one's results go to eval/epoch_N/, not over each other."""
    ckpt, root = trained
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for number in (1, 2):
        shutil.copyfile(ckpt, folder / f"epoch_{number}.pt")
        code, _, err = run_cli("eval", folder / f"epoch_{number}.pt", "--shapes")
        assert code == 0, err
    for number in (1, 2):
        written = json.loads((folder / "eval" / f"epoch_{number}" / "shapes.json").read_text())
        assert written["checkpoint"] == str(folder / f"epoch_{number}.pt")
    assert not (folder / "eval" / "shapes.json").exists()


def test_missing_dataset_names_the_fetch_command(trained, run_cli, monkeypatch):
    ckpt, root = trained
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    code, _, err = run_cli("eval", ckpt, "--coco")
    assert code == 3 and "clipctl data fetch coco-karpathy-test" in err and err.count("\n") == 1


def test_no_benchmark_chosen_is_usage_error(trained, run_cli):
    code, _, err = run_cli("eval", trained[0])
    assert code == 2 and "--shapes" in err


class Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited-by-pickle",))


@pytest.mark.parametrize("kind", ["garbage", "foreign", "code", "missing"])
def test_bad_checkpoints_are_one_line_exit_2(kind, tmp_path, run_cli, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "ckpt.pt"
    if kind == "garbage":
        path.write_bytes(os.urandom(256))
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(2)}}, path)
    elif kind == "code":
        torch.save({"format": "clipctl-ckpt", "payload": Exploit()}, path)
    code, _, err = run_cli("eval", path, "--shapes")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "exploited-by-pickle").exists()


def test_off_a_terminal_the_table_keeps_its_width_and_each_message_its_line(trained):
    ckpt, root = trained
    done = subprocess.run(
        [sys.executable, "-m", "clipctl", "eval", str(ckpt), "--shapes"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "CLIPCTL_DATA": str(root), "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    header = next(line for line in lines if "benchmark" in line)
    assert "OBJECTIVE" in header and "…" not in done.stderr and len(header) > 80  # not cut to 80 columns
    assert any(line.startswith("shapes: encoding ") for line in lines) and done.stderr.endswith("\n")


FAST_EVAL = """\
import json, sys, time
from clipctl.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "torch": "torch" in sys.modules, "cpu_s": time.process_time()}))
"""


def eval_before_torch(*args: object, cwd: Path) -> tuple[dict, str, float]:
    """`clipctl eval ARGS` in a fresh interpreter: (its exit code, whether torch got imported, its CPU seconds),
    stderr, and the wall seconds. CPU time, not wall time, bounds the work: the machine may be busy."""
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-c", FAST_EVAL, "eval", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return json.loads(proc.stdout), proc.stderr, time.monotonic() - start


def test_every_missing_dataset_in_one_line_before_torch_loads(tmp_path):
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "ckpt.pt").write_bytes(b"never loaded")  # the datasets are checked before the checkpoint is read
    (run / "recipe.toml").write_text(f'[data]\nroot = "{tmp_path / "empty"}"\n')  # the run's recorded root
    (tmp_path / "empty").mkdir()
    result, err, wall = eval_before_torch(run / "ckpt.pt", "--coco", "--imagenet", "--dataset", "x.json", cwd=tmp_path)
    assert result["code"] == 3 and not result["torch"] and result["cpu_s"] < 2.0, (result, err)
    assert wall < 30  # generous: a busy machine; the CPU time above is the real bound
    assert err.startswith("clipctl: error: 3 datasets missing: ") and err.count("\n") == 1
    for text in ("fetch coco-karpathy-test", "fetch imagenet-val", "x.json: neither a dataset id", str(tmp_path)):
        assert text in err
    assert "Traceback" not in err and not (run / "eval").exists()


def test_a_missing_checkpoint_is_reported_before_torch_loads(tmp_path):
    result, err, _ = eval_before_torch(tmp_path / "nothere.pt", "--shapes", cwd=tmp_path)
    assert result == {**result, "code": 2, "torch": False} and result["cpu_s"] < 2.0
    assert err == f"clipctl: error: {tmp_path / 'nothere.pt'}: no such clipctl checkpoint; pass runs/<run>/ckpt.pt\n"
    result, err, _ = eval_before_torch(tmp_path, "--shapes", cwd=tmp_path)
    assert result["code"] == 2 and not result["torch"] and "a folder, not a checkpoint file" in err
