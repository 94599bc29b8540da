"""Evaluation sets are built once per run and reused every epoch; evaluation says how many images it scored
out of how many and refuses (exit 3) when more than `eval.max_missing` are missing or unreadable."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from helpers.trainkit import TINY_SHAPES, make_tiny_shapes, tiny_recipe

from clipctl.data.datasets import ClassificationDataset, RetrievalDataset
from clipctl.data.layouts import READERS
from clipctl.train import components
from clipctl.train.trainer import TrainOptions, train

pytestmark = pytest.mark.slow  # one short training for the module
BUILT: Counter = Counter()


class CountingRetrieval(RetrievalDataset):
    def __init__(self, source, *args, **kwargs):
        BUILT[("retrieval", Path(source).name)] += 1
        super().__init__(source, *args, **kwargs)


class CountingClassification(ClassificationDataset):
    def __init__(self, root, *args, **kwargs):
        BUILT[("classification", Path(root).name)] += 1
        super().__init__(root, *args, **kwargs)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch tiny run with the dataset classes counted; (run dir, data root)."""
    root = tmp_path_factory.mktemp("data")
    shapes = make_tiny_shapes(root, TINY_SHAPES)
    runs = tmp_path_factory.mktemp("runs")
    BUILT.clear()
    with pytest.MonkeyPatch.context() as patch:  # the readers of the two layouts, counting what they build
        for layout, counting in (("retrieval-json", CountingRetrieval), ("class-folder", CountingClassification)):
            patch.setitem(READERS, layout, dataclasses.replace(READERS[layout], read=counting))
        recipe = tiny_recipe(shapes, **{"train.epochs": 2, "data.train_fraction": 0.25})  # 2 updates an epoch
        train(recipe, TrainOptions(out_dir=runs, name="r"))
    return runs / "r", root


def test_eval_sets_are_built_once_over_a_two_epoch_run(run):
    records = [json.loads(line) for line in (run[0] / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["type"] == "eval"]
    assert len(evals) == 2  # both epochs validated ...
    assert dict(BUILT) == {
        ("retrieval", "val.json"): 1,
        ("classification", "zeroshot_val"): 1,  # ... on one build
        ("retrieval", "test.json"): 1,
        ("classification", "zeroshot"): 1,
    }
    for record in evals:
        assert record["val/retrieval_scored"] == record["val/retrieval_total"] == TINY_SHAPES.eval_images
        assert record["val/zeroshot_scored"] == record["val/zeroshot_total"] == 64 * TINY_SHAPES.zeroshot_val_per_class


@pytest.fixture
def damaged(run, tmp_path, monkeypatch) -> tuple[Path, list[str]]:
    """A copy of the data root whose shapes test split lost one image, has an HTML page for another and a
    third cut short (its header still opens: it fails only when decoded)."""
    root = tmp_path / "data"
    shutil.copytree(run[1], root)
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    images = [entry["image"] for entry in json.loads((root / "shapes" / "test.json").read_text())]
    folder = root / "shapes"
    (folder / images[0]).unlink()
    (folder / images[1]).write_bytes(b"<!DOCTYPE html><html>404</html>")
    data = (folder / images[2]).read_bytes()
    (folder / images[2]).write_bytes(data[: len(data) // 2])
    return run[0] / "ckpt.pt", images


def test_eval_refuses_missing_images_beyond_max_missing(damaged, run_cli):
    ckpt, images = damaged
    code, out, err = run_cli("eval", ckpt, "--shapes", "--json")
    errors = [line for line in err.splitlines() if line.startswith("clipctl: error")]
    assert code == 3 and len(errors) == 1 and "Traceback" not in err and out == ""
    assert f"2 of {TINY_SHAPES.eval_images} images are missing or unreadable" in errors[0]
    assert "eval.max_missing = 0" in errors[0] and "test.json" in errors[0]
    code, _, err = run_cli("eval", ckpt, "--shapes", "--max-missing", "2")
    assert code == 3 and f"3 of {TINY_SHAPES.eval_images} images" in err  # the truncated one fails at decode


def test_eval_says_how_many_it_scored(damaged, run_cli):
    ckpt, _ = damaged
    total = TINY_SHAPES.eval_images
    code, out, err = run_cli("eval", ckpt, "--shapes", "--json", "--max-missing", "3")
    assert code == 0, err
    result = json.loads(out)["shapes"]
    assert (result["retrieval_scored"], result["retrieval_total"]) == (total - 3, total)
    assert result["zeroshot_scored"] == result["zeroshot_total"] == 64
    assert json.loads((ckpt.parent / "eval" / "shapes.json").read_text())["retrieval_scored"] == total - 3
    code, _, err = run_cli("eval", ckpt, "--shapes", "--max-missing", "3")
    assert code == 0  # the table's SCORED column may be cut off the terminal's width; the line below is not
    assert f"shapes: scored {total - 3} of {total} retrieval images, 64 of 64 zero-shot images" in err


def test_a_run_evaluates_in_its_training_precision(tmp_path, monkeypatch):
    """Validation and the final test encode in the precision the run trains in (bf16 here, on the CPU)."""
    shapes = make_tiny_shapes(tmp_path / "data", TINY_SHAPES)
    seen: list[tuple[str, str]] = []
    original = components.evaluate_split

    def spy(*args, **kwargs):
        seen.append((kwargs["prefix"], kwargs["precision"]))
        return original(*args, **kwargs)

    monkeypatch.setattr(components, "evaluate_split", spy)
    recipe = tiny_recipe(shapes, **{"train.epochs": 1, "data.train_fraction": 0.25, "train.precision": "bf16"})
    train(recipe, TrainOptions(out_dir=tmp_path / "runs", name="bf16"))
    assert seen == [("val/", "bf16"), ("", "bf16")]
