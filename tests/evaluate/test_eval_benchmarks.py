"""Benchmarks come from the dataset records: a new benchmark is one module with one registration line, any
retrieval JSON or class folder can be evaluated by path with the built-in numbers, and the data root given on
the command line or in $CLIPCTL_DATA beats the one recorded in the checkpoint."""

from __future__ import annotations

import hashlib
import importlib
import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO_ROOT
from helpers.trainkit import TINY_SHAPES, make_tiny_shapes, tiny_recipe

from clipctl.data.records import REGISTRY
from clipctl.train.trainer import TrainOptions, train

pytestmark = pytest.mark.slow  # one short training for the module
RETRIEVAL = ("tr@1", "tr@5", "tr@10", "ir@1", "ir@5", "ir@10", "r_mean")
ZEROSHOT = ("acc@1", "acc@5")

NEW_BENCHMARK = '''
"""tinyflickr: a retrieval benchmark copied from a folder you name (`--source DIR`: test.json and its images)."""

import shutil

from clipctl.data.manifest import check_hashes, sha256_file
from clipctl.data.records import Benchmark, DatasetOptions, DatasetSpec, Preparer, Split, dataset_dir, register_dataset
from clipctl.data.staging import staged


class Options(DatasetOptions):
    source: str


class CopyFolder(Preparer):
    def prepare(self, spec, root, options, *, force):
        with staged(dataset_dir(spec, root)) as stage:
            shutil.copytree(options.source, stage, dirs_exist_ok=True)
            files = {p.relative_to(stage).as_posix(): sha256_file(p) for p in stage.rglob("*") if p.is_file()}
        return {"files": files, "counts": {"files": len(files)}}

    def verify(self, spec, root, manifest):
        check_hashes(dataset_dir(spec, root), manifest["files"], spec.id)


register_dataset(
    DatasetSpec(
        id="tinyflickr",
        role="eval",
        description="a tiny retrieval benchmark",
        licence="made by the test",
        folder="tinyflickr",
        splits={"test": Split("test.json", "retrieval")},
        default_split="test",
        preparer=CopyFolder(),
        options=Options,
        benchmarks=(Benchmark("tinyflickr", ("test",), help="tiny retrieval benchmark"),),
    )
)
'''


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A checkpoint trained a few updates with `data.root` recorded; its data root holds shapes with a manifest."""
    root = tmp_path_factory.mktemp("evaldata")
    shapes = make_tiny_shapes(root, TINY_SHAPES)
    runs = tmp_path_factory.mktemp("runs")
    recipe = tiny_recipe(shapes, **{"train.epochs": 1, "train.max_steps": 3, "data.root": str(root)})
    train(recipe, TrainOptions(out_dir=runs, name="r"))
    return runs / "r" / "ckpt.pt", root


def _json(run_cli, *args) -> tuple[dict, str]:
    code, out, err = run_cli("eval", *args, "--json")
    assert code == 0, err
    return json.loads(out), err


def _tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(folder).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()


def test_a_new_benchmark_is_one_module_with_one_registration(trained, run_cli, tmp_path, monkeypatch):
    ckpt, root = trained
    monkeypatch.setenv("CLIPCTL_DATA", str(tmp_path / "data"))
    source = tmp_path / "flickr-copy"  # the folder a user already has
    shutil.copytree(root / "shapes" / "test", source / "test")
    shutil.copy(root / "shapes" / "test.json", source / "test.json")
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "tinyflickr.py").write_text(NEW_BENCHMARK)
    package_before = _tree_digest(REPO_ROOT / "clipctl")
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "tinyflickr", raising=False)
    monkeypatch.setitem(REGISTRY, "tinyflickr", None)  # so that the registration is undone after the test
    importlib.import_module("tinyflickr")

    code, _, err = run_cli("data", "fetch", "tinyflickr", "--source", source)
    assert code == 0 and "tinyflickr: fetched and verified" in err, err
    assert run_cli("data", "verify", "tinyflickr")[0] == 0
    new, err = _json(run_cli, ckpt, "--dataset", "tinyflickr")
    same, _ = _json(run_cli, ckpt, "--dataset", root / "shapes" / "test.json")  # the same data by path
    assert list(new) == ["tinyflickr"] and new["tinyflickr"]["retrieval_source"] == "tinyflickr"
    assert {k: new["tinyflickr"][k] for k in RETRIEVAL} == {
        k: same[str(root / "shapes" / "test.json")][k] for k in RETRIEVAL
    }
    assert new["tinyflickr"]["retrieval_total"] == TINY_SHAPES.eval_images
    assert (ckpt.parent / "eval" / "tinyflickr.json").is_file()
    shorthand, _ = _json(run_cli, ckpt, "--tinyflickr")  # its shorthand comes from the record too
    assert {k: shorthand["tinyflickr"][k] for k in RETRIEVAL} == {k: new["tinyflickr"][k] for k in RETRIEVAL}
    # what it took: one module in a package of its own, one registration line, no file of clipctl touched
    assert [p.name for p in package.iterdir() if p.is_file()] == ["tinyflickr.py"]
    assert NEW_BENCHMARK.count("register_dataset(") == 1
    assert _tree_digest(REPO_ROOT / "clipctl") == package_before


def test_paths_to_a_retrieval_json_and_a_class_folder_give_the_built_in_numbers(trained, run_cli, monkeypatch):
    ckpt, root = trained
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    built_in, _ = _json(run_cli, ckpt, "--shapes")
    retrieval, zeroshot = str(root / "shapes" / "test.json"), str(root / "shapes" / "zeroshot")
    by_path, _ = _json(run_cli, ckpt, "--dataset", retrieval, "--dataset", zeroshot)
    shapes = built_in["shapes"]
    assert list(by_path) == [retrieval, zeroshot, "combined"]
    assert {k: by_path[retrieval][k] for k in RETRIEVAL} == {k: shapes[k] for k in RETRIEVAL}
    assert {k: by_path[zeroshot][k] for k in ZEROSHOT} == {k: shapes[k] for k in ZEROSHOT}
    assert by_path["combined"]["objective"] == pytest.approx(shapes["objective"])
    assert by_path[retrieval]["retrieval_source"] == retrieval and by_path[zeroshot]["zeroshot_source"] == zeroshot
    assert shapes["retrieval_source"] == "shapes:test" and shapes["zeroshot_source"] == "shapes:zeroshot"
    written = json.loads((ckpt.parent / "eval" / "test.json").read_text())
    assert written["tr@1"] == shapes["tr@1"] and (ckpt.parent / "eval" / "zeroshot.json").is_file()
    code, _, err = run_cli("eval", ckpt, "--dataset", retrieval, "--dataset", zeroshot)  # the table
    assert code == 0 and f"{retrieval}: scored {TINY_SHAPES.eval_images} of" in err and "combined" in err
    ids, _ = _json(run_cli, "--dataset", "shapes", ckpt)  # an id alone is its benchmark, in any word order
    assert {k: ids["shapes"][k] for k in RETRIEVAL + ZEROSHOT} == {k: shapes[k] for k in RETRIEVAL + ZEROSHOT}
    split, _ = _json(run_cli, ckpt, "--dataset", "shapes:zeroshot_val")
    assert (
        set(split) == {"shapes:zeroshot_val"}
        and split["shapes:zeroshot_val"]["zeroshot_source"] == "shapes:zeroshot_val"
    )


def test_the_data_root_given_or_in_the_environment_beats_the_checkpoints(trained, run_cli, tmp_path, monkeypatch):
    ckpt, root = trained
    other = tmp_path / "other"
    make_tiny_shapes(other, TINY_SHAPES.model_copy(update={"seed": 1}))  # other images, same layout
    expect_other, _ = _json(
        run_cli, ckpt, "--dataset", other / "shapes" / "test.json", "--dataset", other / "shapes" / "zeroshot"
    )
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    given, err = _json(run_cli, ckpt, "--shapes", "--data-root", other)
    assert f"data root: {other} (--data-root)" in err
    assert given["shapes"]["tr@1"] == expect_other[str(other / "shapes" / "test.json")]["tr@1"]
    assert given["shapes"]["acc@1"] == expect_other[str(other / "shapes" / "zeroshot")]["acc@1"]
    monkeypatch.setenv("CLIPCTL_DATA", str(other))
    from_env, err = _json(run_cli, ckpt, "--shapes")  # the checkpoint recorded data.root = root
    assert f"data root: {other} ($CLIPCTL_DATA)" in err and from_env["shapes"]["tr@1"] == given["shapes"]["tr@1"]
    monkeypatch.delenv("CLIPCTL_DATA")
    recorded, err = _json(run_cli, ckpt, "--shapes")
    assert f"data root: {root} (the checkpoint's data.root)" in err
    assert {k: recorded["shapes"][k] for k in RETRIEVAL} != {k: given["shapes"][k] for k in RETRIEVAL}


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--cocoo"], 2, "--cocoo: no such option; did you mean --coco? benchmarks: --coco, --imagenet"),
        (["--jsn"], 2, "--jsn: no such option; did you mean --json?"),
        (["--shapes=1"], 2, "--shapes=1: takes no value; write --shapes"),
        (["--dataset", "nowhere/x.json"], 3, "nowhere/x.json: neither a dataset id nor an existing file or folder"),
        (["--dataset", "shapes:train"], 2, "shapes:train: training pairs, not a retrieval or zero-shot set"),
        (["--dataset", "imagenet-val:nope"], 3, "imagenet-val:nope: imagenet-val has no split 'nope'"),
        (["--dataset", "coco-val-5k"], 3, "run `clipctl data fetch coco-val-5k`"),
        (["other.pt"], 2, "clipctl eval: give one checkpoint, got 2"),
    ],
)
def test_bad_eval_requests_are_one_line_before_any_encoding(args, code, expected, trained, run_cli, monkeypatch):
    ckpt, root = trained
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    before = sorted(p.name for p in (ckpt.parent / "eval").glob("*")) if (ckpt.parent / "eval").exists() else []
    got, _, err = run_cli("eval", ckpt, *args)
    assert got == code and err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert (
        sorted(p.name for p in (ckpt.parent / "eval").glob("*")) if (ckpt.parent / "eval").exists() else []
    ) == before
