"""A dataset is one record: its options are its identity (a present copy is verified, never silently re-made,
and a run refuses one made with other options), it is made through the one staging helper, its splits are read
by the reader of their layout, and no code outside its own module branches on its id."""

from __future__ import annotations

import ast
import importlib
import json
import sys
import textwrap
from pathlib import Path

import pytest
from helpers.fake_files import jpeg_bytes
from helpers.paths import REPO_ROOT

from clipctl.data import shapes
from clipctl.data.datasets import PairsDataset, reader_for
from clipctl.data.layouts import READERS
from clipctl.data.operations import check_for_run, ensure_for_run
from clipctl.data.records import REGISTRY, split_ref
from clipctl.data.references import open_reference
from clipctl.data.registry import parse_ref
from clipctl.data.staging import staged
from clipctl.data.transforms import eval_transform
from clipctl.errors import DataError, UsageError

PACKAGE = REPO_ROOT / "clipctl"
TINY = ["--train-size", "100", "--image-size", "32", "--eval-images", "4"]
TINY += ["--zeroshot-val-per-class", "1", "--zeroshot-per-class", "1"]
TINY_SETTINGS = {"shapes_train_size": 100, "shapes_image_size": 32}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _params(root: Path) -> dict:
    return json.loads((root / "manifests" / "shapes.json").read_text())["params"]


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("clipctl: error")]


# ------------------------------------------------------------------------------ no dataset knowledge elsewhere


def _id_of(node: ast.AST) -> str | None:
    """The registered dataset a string constant names ("shapes", "imagenet-val:test"), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        head, _ = split_ref(node.value)
        return head if head in REGISTRY else None
    return None


def _dataset_branches(source: str) -> list[tuple[int, str]]:
    """(line, id) of every comparison with, membership in, `startswith` of, dict keyed by or tuple made of dataset
    ids: the ways code picks behaviour by dataset."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            operands += [e for o in operands if isinstance(o, (ast.Tuple, ast.List, ast.Set)) for e in o.elts]
            found += [(node.lineno, i) for i in map(_id_of, operands) if i]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith"):
                found += [(node.lineno, i) for i in map(_id_of, node.args) if i]
        elif isinstance(node, ast.Dict):
            found += [(node.lineno, i) for i in map(_id_of, node.keys) if i]
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set)) and node.elts and all(map(_id_of, node.elts)):
            found.append((node.lineno, _id_of(node.elts[0]) or ""))
    return found


def _own_module(dataset_id: str) -> Path:
    spec = REGISTRY[dataset_id]
    return Path(type(spec.preparer).__module__.replace(".", "/") + ".py")


def test_no_code_outside_a_datasets_own_module_branches_on_its_id():
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO_ROOT)
        found += [f"{rel}:{line} {i}" for line, i in _dataset_branches(path.read_text()) if _own_module(i) != rel]
    assert found == []


def test_the_branch_finder_sees_each_kind_of_branch():
    planted = textwrap.dedent(
        """
        if dataset_id == "shapes": pass
        if "cc3m-100k" in ids: pass
        ok = ref.startswith("imagenet-val")
        table = {"coco-karpathy-test": 1}
        ids = ("coco-karpathy-test", "coco-val-5k")
        fine = ("data.train", "cc3m-100k")
        """
    )
    assert [i for _, i in _dataset_branches(planted)] == [
        "shapes",
        "cc3m-100k",
        "imagenet-val",
        "coco-karpathy-test",
        "coco-karpathy-test",
    ]


def test_a_reference_is_cut_in_one_place():
    cuts = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("partition", "rpartition", "split", "rsplit")
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == ":"
            ):
                cuts.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    # records.split_ref, and the loss registry's "module:Class" import paths (not a dataset reference)
    assert [c.rsplit(":", 1)[0] for c in cuts] == ["clipctl/data/records.py", "clipctl/losses/registry.py"]


def test_a_reference_is_a_registered_id_with_its_split_or_else_a_path(tmp_path):
    assert (parse_ref("imagenet-val:test").spec.id, parse_ref("imagenet-val:test").split) == ("imagenet-val", "test")
    assert parse_ref(" shapes ").spec.id == "shapes" and parse_ref("shapes").split == ""
    odd = tmp_path / "a:b" / "x.json"
    assert parse_ref(str(odd)).spec is None and parse_ref(str(odd)).path == odd  # a path may hold a ":"
    assert parse_ref("shapes:test").source("test") == "shapes:test"
    assert parse_ref("coco-karpathy-test").source("test") == "coco-karpathy-test"  # its default split


# ------------------------------------------------------------------------------------------------ staging


def test_staging_swaps_in_a_finished_folder_and_leaves_the_old_one_on_any_failure(tmp_path):
    target = tmp_path / "ds"
    with staged(target) as stage:
        (stage / "a.txt").write_text("one")
    assert _files(target) == {"a.txt": b"one"}
    for failure in (DataError("bad source"), KeyboardInterrupt(), OSError(28, "No space left on device")):
        with pytest.raises(type(failure)):
            with staged(target) as stage:
                (stage / "b.txt").write_text("half")
                raise failure
        assert _files(target) == {"a.txt": b"one"}  # the old copy, untouched
        assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp folder left behind


def test_a_shapes_generation_that_fails_half_way_leaves_the_old_copy(data_root, run_cli, monkeypatch):
    assert run_cli("data", "fetch", "shapes", *TINY)[0] == 0
    before = _files(data_root)

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device", str(data_root / ".shapes.tmp-1" / "x.png"))

    monkeypatch.setattr(shapes, "_render", broken)
    code, _, err = run_cli("data", "fetch", "shapes", *TINY, "--seed", "5")
    assert code == 1 and len(_errors(err)) == 1 and "Traceback" not in err
    assert _files(data_root) == before and not [p for p in data_root.iterdir() if ".tmp-" in p.name]


# ------------------------------------------------------------------------- shapes, like every other dataset


def test_a_present_shapes_is_only_verified_unless_other_options_are_named(data_root, run_cli):
    code, _, err = run_cli("data", "fetch", "shapes", *TINY)
    assert code == 0 and "generated" in err
    made = _files(data_root / "shapes")
    code, _, err = run_cli("data", "fetch", "shapes")  # no options: the demo's data stays, not the 20k default
    assert code == 0 and "already present and verified" in err and _files(data_root / "shapes") == made
    assert _params(data_root)["train_size"] == 100
    code, _, err = run_cli("data", "fetch", "shapes", "--seed", "3")  # the options not named keep their values
    assert code == 0 and "making it again with seed 3" in err and "generated" in err
    assert _params(data_root) == {**shapes.ShapesConfig(**_params(data_root)).model_dump(), "seed": 3}
    assert _params(data_root)["train_size"] == 100 and _files(data_root / "shapes") != made
    code, _, err = run_cli("data", "fetch", "shapes", "--seed", "3", "--train-size", "100")
    assert code == 0 and "already present and verified" in err


def test_a_run_never_undoes_a_fetched_seed_and_names_the_key_that_uses_it(data_root, run_cli):
    assert run_cli("data", "fetch", "shapes", *TINY, "--seed", "3")[0] == 0
    before = _files(data_root)
    tiny = {"shapes_train_size": 100, "shapes_image_size": 32}
    refs = ["shapes:train", "shapes:val"]
    with pytest.raises(DataError) as err:  # the recipe's shapes seed is unset, i.e. 0
        ensure_for_run(refs, data_root, tiny)
    message = str(err.value)
    assert "made with seed 3" in message and "set data.shapes_seed = 3 to use it" in message and "\n" not in message
    assert "clipctl data fetch shapes --force --seed 0" in message and err.value.exit_code == 3
    assert _files(data_root) == before  # nothing regenerated
    ensure_for_run(refs, data_root, {**tiny, "shapes_seed": 3}).release()  # the seed is part of the recipe
    with pytest.raises(
        DataError, match=r"made with train_size 100, but this run asks for data.shapes_train_size = 20000"
    ):
        check_for_run(refs, data_root, {"shapes_image_size": 32, "shapes_seed": 3})
    assert _files(data_root) == before  # (eval_images 4 is the fetch's to choose: a recipe cannot set it)


def test_a_run_makes_an_absent_made_on_use_dataset_but_never_a_real_one(data_root):
    lease = ensure_for_run(["shapes:train", "coco-karpathy-test"], data_root, {"shapes_train_size": 100})
    try:
        assert lease.held == 2 and _params(data_root)["train_size"] == 100
        assert not (data_root / "manifests" / "coco-karpathy-test.json").exists()  # fetched explicitly only
    finally:
        lease.release()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            ["shapes", "--seed", "-1"],
            "clipctl data fetch shapes: seed = '-1': Input should be greater than or equal to 0",
        ),
        (["shapes", "--seed", "x"], "seed = 'x'"),
        (["shapes", "--bogus", "1"], "--bogus: not an option of shapes (no dataset has it); its options: --seed"),
        (["coco-val-5k", "--seed", "1"], "--seed: not an option of coco-val-5k (only for `clipctl data fetch shapes`)"),
        (["shapes", "--seed"], "--seed: needs a value (--seed VALUE)"),
        (["shapes", "coco-val-5k"], "clipctl data fetch: give one dataset id, got 2: shapes coco-val-5k"),
    ],
)
def test_bad_fetch_options_are_one_line_and_make_nothing(args, expected, data_root, run_cli):
    code, _, err = run_cli("data", "fetch", *args)
    assert code == 2 and len(_errors(err)) == 1 and expected in _errors(err)[0]
    assert "Traceback" not in err and not (data_root / "manifests").exists()


def test_data_root_on_fetch_ls_and_verify_beats_the_environment(data_root, run_cli, tmp_path):
    other = tmp_path / "other"
    assert run_cli("data", "fetch", "--data-root", other, "shapes", *TINY)[0] == 0  # options in any order
    assert (other / "manifests" / "shapes.json").is_file() and not (data_root / "manifests").exists()
    code, out, _ = run_cli("data", "ls", "--json", "--data-root", other)
    rows = {r["id"]: r for r in json.loads(out)["datasets"]}
    assert code == 0 and rows["shapes"]["present"] and rows["shapes"]["options"]["train_size"] == 100
    assert run_cli("data", "verify", "shapes", "--data-root", other)[0] == 0
    code, _, err = run_cli("data", "verify", "shapes")  # $CLIPCTL_DATA has none
    assert code == 3 and "not present under" in err and str(data_root) in err


# ------------------------------------------------------------------------------------------------- readers


def test_each_layout_is_read_by_its_registered_reader(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / "classes").mkdir()
    (tmp_path / "pairs.json").write_text("[]")
    (tmp_path / "select.txt").write_text("")
    picks = {
        "pairs.json": reader_for(tmp_path / "pairs.json", ("pairs",)).layout,
        "course": reader_for(tmp_path / "pairs.json", ("pairs",), image_root_given=True).layout,
        "shards": reader_for(tmp_path / "shards", ("pairs",)).layout,
        "retrieval": reader_for(tmp_path / "pairs.json", ("retrieval", "classification")).layout,
        "classes": reader_for(tmp_path / "classes", ("retrieval", "classification")).layout,
        "list": reader_for(tmp_path / "select.txt", ("classification",)).layout,
    }
    assert picks == {
        "pairs.json": "pairs-json",
        "course": "course-json",
        "shards": "webdataset",
        "retrieval": "retrieval-json",
        "classes": "class-folder",
        "list": "class-folder",
    }
    with pytest.raises(DataError) as err:
        reader_for(tmp_path / "select.txt", ("retrieval",), what="--dataset")
    assert str(err.value).startswith("--dataset = ") and "a file; expected a retrieval JSON" in str(err.value)


LAYOUT = '''
"""Training pairs as a tab-separated file: image path, then caption."""
from pathlib import Path

from clipctl.data.layouts import PairsSource, Reader, register_reader


def read_pairs_tsv(path: Path, image_root: Path | None = None) -> PairsSource:
    rows = [line.split("\\t") for line in path.read_text().splitlines() if line]
    items = [(image_root or path.parent) / image for image, _ in rows]
    return PairsSource(items, [str(p) for p in items], [i for i, _ in rows], [c for _, c in rows], Path, True)


register_reader(Reader("pairs-tsv", "pairs", "a pairs TSV", lambda p, _: p.suffix == ".tsv", read_pairs_tsv))
'''


def test_a_new_layout_is_one_module_with_one_registration(tmp_path, monkeypatch):
    package = tmp_path / "plugins"
    package.mkdir()
    (package / "pairs_tsv.py").write_text(LAYOUT)
    monkeypatch.syspath_prepend(str(package))
    monkeypatch.delitem(sys.modules, "pairs_tsv", raising=False)
    monkeypatch.setitem(READERS, "pairs-tsv", None)  # so that the registration below is undone after the test
    importlib.import_module("pairs_tsv")
    for i in range(3):
        (tmp_path / f"{i}.jpg").write_bytes(jpeg_bytes((200, 30, 30)))
    (tmp_path / "train.tsv").write_text("".join(f"{i}.jpg\tA Red Circle, {i}!\n" for i in range(3)))
    dataset = PairsDataset(tmp_path / "train.tsv", eval_transform(16))
    assert len(dataset) == 3 and dataset.captions[1] == "a red circle 1" and dataset.image(2).size == (40, 30)
    assert [p.name for p in package.iterdir()] == ["pairs_tsv.py"] and LAYOUT.count("register_reader(") == 1


def test_a_recipe_reference_of_the_wrong_kind_names_the_splits_that_fit(data_root, run_cli):
    assert run_cli("data", "fetch", "shapes", *TINY)[0] == 0
    with pytest.raises(UsageError) as err:
        open_reference("shapes:zeroshot_val", "retrieval", data_root, eval_transform(16))
    assert str(err.value) == (
        "shapes:zeroshot_val: a classification split, not a retrieval set; choose shapes:val or shapes:test"
    )
    assert len(open_reference("shapes:val", "retrieval", data_root, eval_transform(16))) == 4
    assert len(open_reference(str(data_root / "shapes" / "zeroshot"), "classification", data_root, eval_transform(16)))


def test_the_help_lists_the_options_and_shorthands_the_records_declare(run_cli, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run_cli("data", "fetch", "--help")
    assert code == 0 and "cc3m-100k: --prepare-size (default 256)" in out and "shapes: --seed (default 0)" in out
    code, out, _ = run_cli("eval", "--help")
    flags = [f"--{b.flag}" for spec in REGISTRY.values() for b in spec.benchmarks]
    assert code == 0 and sorted(flags) == ["--coco", "--imagenet", "--imagenet-full", "--shapes"]
    assert all(f"{flag}: " in out for flag in flags) and "--dataset" in out and "--data-root" in out
