"""`clipctl eval` on a real (briefly trained) checkpoint, and its bad-input paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
