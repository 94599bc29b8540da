"""Issue 15: honest ImageNet selection (select/test splits, the recipe check), the user's ImageNet layouts,
the course's CC3M layout referenced in place, shorter-side preparation and the training-subset identity."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from pathlib import Path

import pytest
from helpers.fake_files import jpeg_bytes
from helpers.output import without_warnings
from helpers.rundirs import COCO_IMAGENET, make_run
from helpers.trainkit import make_tiny_shapes, tiny_overrides, tiny_recipe
from PIL import Image
from test_data_sources import TRUTH, WNID, _devkit, _patch_imagenet

from clipctl.data import registry
from clipctl.data.cc3m import resize_jpeg
from clipctl.data.datasets import ClassificationDataset
from clipctl.data.imagenet import selection_split
from clipctl.data.imagenet_classes import imagenet_classnames, imagenet_templates, imagenet_wnids
from clipctl.data.registry import resolve
from clipctl.data.transforms import eval_transform
from clipctl.recipe import load_recipe
from clipctl.tune.recipe import load_tune_recipe

# ------------------------------------------------------------------------------ selection honesty


@pytest.mark.parametrize(
    "kind, val, test",
    [
        ("zeroshot", "imagenet-val", "imagenet-val"),
        ("zeroshot", "imagenet-val:select", "imagenet-val"),  # the full 50k holds the selection fifth
        ("retrieval", "coco-karpathy-test", "coco-karpathy-test"),
    ],
)
def test_equal_validation_and_test_splits_exit_2_naming_both_keys(kind, val, test, run_cli, tmp_path):
    code, _, err = run_cli(
        "train", "quickstart", f"eval.val_{kind}={val}", f"eval.test_{kind}={test}", "--dry-run", "--out", tmp_path
    )
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert f"eval.val_{kind} = {val!r}" in err and f"eval.test_{kind} = {test!r}" in err
    assert "eval.allow_test_selection = true" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_selecting_on_test_needs_the_explicit_switch():
    with pytest.raises(Exception, match="eval.select_on"):
        load_recipe("quickstart", ["eval.select_on=test"])
    same = ["eval.val_zeroshot=imagenet-val", "eval.test_zeroshot=imagenet-val", "eval.allow_test_selection=true"]
    assert load_recipe("quickstart", same).eval.allow_test_selection
    assert (
        load_recipe(
            "quickstart", ["eval.val_zeroshot=imagenet-val:select", "eval.test_zeroshot=imagenet-val:test"]
        ).eval.test_zeroshot
        == "imagenet-val:test"
    )


@pytest.mark.parametrize("name", ["clip_adamw", "sogclr_adamw", "isogclr_radam"])
def test_builtin_recipes_select_on_held_out_splits_and_report_the_test_splits(name):
    ev = load_recipe(name).eval
    assert (ev.val_retrieval, ev.val_zeroshot) == ("coco-val-5k", "imagenet-val:select")
    assert (ev.test_retrieval, ev.test_zeroshot) == ("coco-karpathy-test", "imagenet-val:test")
    assert ev.select_on == "val" and not ev.allow_test_selection


@pytest.mark.parametrize(
    "name", ["tune/phase1", "tune/phase2", "tune/phase3", "tune/quick/phase1", "tune/quick/phase2", "tune/quick/phase3"]
)
def test_tune_recipes_pass_the_selection_check(name):
    tune, path = load_tune_recipe(name)  # validates base + fixed, and every space bound
    assert tune.tune.objective == "val/objective"


# ------------------------------------------------------------------------------ the split rule


WNIDS3 = ("n01440764", "n01443537", "n01484850")


def _class_folders(root: Path, names: list[str]) -> Path:
    for name in names:
        folder = root / WNIDS3[int(name[15:23]) % 3]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"")
    return root


def test_selection_split_is_a_fifth_of_every_class_by_sorted_name(tmp_path):
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in range(1, 151)]
    shuffled = names[:]
    random.Random(0).shuffle(shuffled)
    select, test = selection_split(_class_folders(tmp_path / "a", shuffled))
    assert len(select) == 30 and len(test) == 120 and not set(select) & set(test)
    for wnid in WNIDS3:
        own = sorted(p.name for p in (tmp_path / "a" / wnid).iterdir())
        assert [s.split("/")[1] for s in select if s.startswith(wnid)] == own[0::5]  # 10 of 50
        assert sum(t.startswith(wnid) for t in test) == 40
    # The same on every machine: only the names count, not creation or directory order.
    assert selection_split(_class_folders(tmp_path / "b", names[::-1])) == (select, test)
    assert select[:2] == ["n01440764/ILSVRC2012_val_00000003.JPEG", "n01440764/ILSVRC2012_val_00000018.JPEG"]


# ------------------------------------------------------------------------------ ImageNet layouts


def _tiny_jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 30, 60)).save(buffer, format="JPEG")
    return buffer.getvalue()


@pytest.fixture
def extracted_val(tmp_path, monkeypatch) -> Path:
    """$CLIPCTL_IMAGENET_DIR holding val/ of the 1,000 real wnid folders, 2 tiny JPEGs each."""
    jpeg = _tiny_jpeg_bytes()
    number = 0
    for wnid in imagenet_wnids():
        (tmp_path / "imagenet" / "val" / wnid).mkdir(parents=True)
        for _ in range(2):
            number += 1
            (tmp_path / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(jpeg)
    spec = registry.REGISTRY["imagenet-val"]
    fake = dataclasses.replace(spec, expect={"classes": 1000, "images": 2000})
    monkeypatch.setitem(registry.REGISTRY, "imagenet-val", fake)
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(tmp_path / "imagenet"))
    return tmp_path / "imagenet" / "val"


def test_extracted_wnid_folders_fetch_with_the_vendored_names_and_disjoint_splits(extracted_val, data_root, run_cli):
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0, err
    transform = eval_transform(16)
    full = ClassificationDataset(resolve("imagenet-val", data_root), transform)
    select = ClassificationDataset(resolve("imagenet-val:select", data_root), transform)
    test = ClassificationDataset(resolve("imagenet-val:test", data_root), transform)
    assert full.classnames == list(imagenet_classnames()) and full.templates == list(imagenet_templates())
    assert (len(full), len(select), len(test)) == (2000, 1000, 1000)
    assert not {p for p, _ in select.samples} & {p for p, _ in test.samples}
    assert set(select.labels.tolist()) == set(test.labels.tolist()) == set(range(1000))  # every class in both
    assert select.class_ids == test.class_ids == full.class_ids  # one label space for all three
    assert (extracted_val / imagenet_wnids()[0] / "ILSVRC2012_val_00000001.JPEG").is_file()  # the user's copy stays
    assert run_cli("data", "verify", "imagenet-val")[0] == 0
    (data_root / "imagenet-val" / "select.txt").write_text("n01440764/ILSVRC2012_val_00000002.JPEG\n")
    code, _, err = run_cli("data", "verify", "imagenet-val")
    assert code == 3 and "select.txt" in err


def test_flat_val_files_plus_devkit_fetch(tmp_path, data_root, run_cli, monkeypatch):
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(1, 7):
        (folder / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(jpeg_bytes((i * 40, 0, 0)))
    devkit = _devkit(TRUTH)
    (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)
    _patch_imagenet(monkeypatch, {"ILSVRC2012_devkit_t12.tar.gz": devkit})
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(folder))
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0, err
    ds = ClassificationDataset(resolve("imagenet-val", data_root), eval_transform(16))
    assert {p.name: ds.class_ids[label] for p, label in ds.samples} == {
        f"ILSVRC2012_val_{i:08d}.JPEG": WNID[t] for i, t in enumerate(TRUTH, 1)
    }
    # 2 images per class: the first (by name) selects, the second tests.
    assert len(ClassificationDataset(resolve("imagenet-val:select", data_root), eval_transform(16))) == 3


@pytest.mark.parametrize("content", ["nothing", "stray"])
def test_an_unknown_imagenet_folder_is_one_line_naming_found_and_expected(
    content, tmp_path, data_root, run_cli, monkeypatch
):
    folder = tmp_path / "mine"
    folder.mkdir()
    if content == "stray":
        (folder / "images").mkdir()
        (folder / "readme.txt").write_text("hi")
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(folder))
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 3 and err.strip().count("\n") <= 1 and "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert "CLIPCTL_IMAGENET_DIR" in line and "found" in line and "wnid folders" in line and "devkit" in line
    assert ("1 folders and 1 files" in line) == (content == "stray")
    assert not (data_root / "manifests" / "imagenet-val.json").exists()


def test_foreign_class_folders_are_refused(tmp_path, data_root, run_cli, monkeypatch):
    (tmp_path / "val" / "n99999999").mkdir(parents=True)
    (tmp_path / "val" / "n99999999" / "ILSVRC2012_val_00000001.JPEG").write_bytes(jpeg_bytes((1, 1, 1)))
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(tmp_path))
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 3 and "not ILSVRC2012 wnids (first: n99999999)" in err


@pytest.mark.slow
def test_fake_imagenet_evaluates_on_test_and_full(extracted_val, tmp_path, run_cli, monkeypatch):
    from clipctl.train.trainer import TrainOptions, train

    root = tmp_path / "evalroot"
    monkeypatch.setenv("CLIPCTL_DATA", str(root))
    assert run_cli("data", "fetch", "imagenet-val")[0] == 0
    (root / "imagenet-val" / "templates.txt").write_text("a photo of a {}.\n")  # 1,000 prompts, not 80,000
    shapes = make_tiny_shapes(root)
    train(tiny_recipe(shapes, **{"train.epochs": 1, "train.max_steps": 2}), TrainOptions(out_dir=tmp_path, name="r"))
    ckpt = tmp_path / "r" / "ckpt.pt"
    code, _, err = run_cli("eval", ckpt, "--imagenet", "--imagenet-full")
    assert code == 0, err
    assert "imagenet: zero-shot on imagenet-val:test" in err and "imagenet-full: zero-shot on all 50k" in err
    result = {
        name: json.loads((tmp_path / "r" / "eval" / f"{name}.json").read_text())
        for name in ("imagenet", "imagenet-full")
    }
    assert result["imagenet"]["zeroshot_source"] == "imagenet-val:test"
    assert result["imagenet-full"]["zeroshot_source"] == "imagenet-val"
    assert 0 <= result["imagenet"]["acc@1"] <= result["imagenet"]["acc@5"] <= 1


# ------------------------------------------------------------------------------ CC3M preparation


def _jpeg_of(size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise(size, 40).convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def test_preparation_sets_the_shorter_side_and_keeps_small_images_byte_for_byte():
    big, small = _jpeg_of((400, 300)), _jpeg_of((200, 150))
    with Image.open(io.BytesIO(resize_jpeg(big))) as img:
        assert img.size == (341, 256)
    with Image.open(io.BytesIO(resize_jpeg(_jpeg_of((300, 400)), 128))) as img:
        assert img.size == (128, 171)
    assert resize_jpeg(small) == small
    assert resize_jpeg(b"not an image") is None


def test_training_on_shards_prepared_at_another_size_names_the_refetch(tmp_path):
    from clipctl.data.manifest import write_manifest
    from clipctl.data.operations import check_for_run
    from clipctl.errors import DataError

    write_manifest(tmp_path, "cc3m-100k", {"prepare_size": 256, "files": {}})
    check_for_run(["cc3m-100k"], tmp_path, {"prepare_size": 256})
    check_for_run(["shapes:train"], tmp_path, {"prepare_size": 384})  # shapes is absent: nothing to compare
    with pytest.raises(DataError, match=r"data.prepare_size = 384.*--force --prepare-size 384") as err:
        check_for_run(["cc3m-100k"], tmp_path, {"prepare_size": 384})
    assert "set data.prepare_size = 256 to use it" in str(err.value) and "\n" not in str(err.value)
    write_manifest(tmp_path, "cc3m-100k", {"files": {}})  # a JSON source: no prepare size to compare
    check_for_run(["cc3m-100k"], tmp_path, {"prepare_size": 384})


# ------------------------------------------------------------------------------ the course's CC3M layout


@pytest.fixture
def course(tmp_path) -> tuple[Path, Path]:
    """The course's layout: clip_train/cc3m_train_subset.json, images in datasets/cc3m_subset_100k/."""
    images = tmp_path / "course" / "datasets" / "cc3m_subset_100k"
    images.mkdir(parents=True)
    entries = []
    for i in range(64):
        name = f"{i:06d}.jpg"
        (images / name).write_bytes(jpeg_bytes((i * 4 % 256, 80, 160 - i)))
        entries.append({"image": name, "caption": f"a photo of thing number {i % 8}", "image_id": i})
    annotations = tmp_path / "course" / "clip_train" / "cc3m_train_subset.json"
    annotations.parent.mkdir()
    annotations.write_text(json.dumps(entries))
    return annotations, images


def _train_tiny(shapes: Path, out: Path, **extra) -> dict:
    from clipctl.train.trainer import TrainOptions, train

    recipe = tiny_recipe(shapes, **{"train.epochs": 1, "train.max_steps": 2, **extra})
    return train(recipe, TrainOptions(out_dir=out, name="course"))


def test_course_json_trains_through_data_image_root(course, tmp_path):
    annotations, images = course
    shapes = make_tiny_shapes(tmp_path / "data")
    summary = _train_tiny(shapes, tmp_path / "runs", **{"data.train": str(annotations), "data.image_root": str(images)})
    assert summary["status"] == "completed" and summary["steps"] == 2
    assert summary["train_subset"]["course"] and summary["train_subset"]["count"] == 64


def test_missing_image_root_is_one_line(course, tmp_path, data_root, run_cli, capsys):
    annotations, _ = course
    overrides = tiny_overrides(
        make_tiny_shapes(data_root), **{"data.train": str(annotations), "data.image_root": str(tmp_path / "nowhere")}
    )
    capsys.readouterr()
    code, _, err = run_cli("train", "quickstart", *overrides, "--out", tmp_path / "runs")
    assert code == 3 and "data.image_root = " in err and without_warnings(err).count("\n") == 1
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("ckpt.pt"))


def test_course_json_and_images_fetch_in_place_and_train(course, tmp_path, data_root, run_cli, monkeypatch):
    annotations, images = course
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(annotations))
    monkeypatch.setenv("CLIPCTL_CC3M_IMAGES", str(images))
    spec = registry.REGISTRY["cc3m-100k"]
    monkeypatch.setitem(registry.REGISTRY, "cc3m-100k", dataclasses.replace(spec, expect={"pairs": 64}))
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    assert code == 0, err
    assert sorted(p.name for p in (data_root / "cc3m-100k").iterdir()) == ["train.json"]  # referenced, not copied
    manifest = json.loads((data_root / "manifests" / "cc3m-100k.json").read_text())
    keys = sorted(f"{i:06d}.jpg" for i in range(64))
    assert manifest["subset"]["keys_sha256"] == hashlib.sha256("\n".join(keys).encode()).hexdigest()
    assert manifest["subset"]["course"] and manifest["images"]["root"] == str(images.resolve())
    assert run_cli("data", "verify", "cc3m-100k")[0] == 0
    shapes = make_tiny_shapes(tmp_path / "shapes-root")
    summary = _train_tiny(shapes, tmp_path / "runs", **{"data.train": "cc3m-100k"})
    assert summary["status"] == "completed" and summary["train_subset"] == manifest["subset"]
    (images / "000003.jpg").write_bytes(jpeg_bytes((1, 2, 3)))  # the referenced folder changed: verify notices
    assert run_cli("data", "verify", "cc3m-100k")[0] == 3


def test_course_json_without_its_image_folder_names_the_variable(course, data_root, run_cli, monkeypatch):
    annotations, _ = course
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(annotations))
    monkeypatch.delenv("CLIPCTL_CC3M_IMAGES", raising=False)
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    assert code == 3 and "Traceback" not in err
    assert "CLIPCTL_CC3M_IMAGES" in err.strip().splitlines()[-1] and not (data_root / "cc3m-100k").exists()


# ------------------------------------------------------------------------------ compare


def test_compare_marks_a_different_training_subset_and_the_zeroshot_split(tmp_path, run_cli):
    subset = {"keys_sha256": "ab" * 32, "count": 100_000, "source": "hub-shards", "course": False}
    cc3m = [*COCO_IMAGENET[:1], "eval.test_zeroshot=imagenet-val:test", "data.train=cc3m-100k"]
    make_run(tmp_path, "hub", overrides=cc3m, summary_extra={"train_subset": subset})
    course = [*cc3m[:2], "data.train=/course/clip_train/cc3m_train_subset.json"]
    make_run(
        tmp_path,
        "course",
        overrides=course,
        summary_extra={"train_subset": {**subset, "source": "course-json", "course": True}},
    )
    code, out, err = run_cli("compare", tmp_path, "--markdown")
    assert code == 0, err
    notes = {line.split("|")[1].strip(): line for line in out.splitlines() if "| clip |" in line}
    assert "different training subset (hub-shards, keys sha256 abababababab)" in notes["hub"]
    assert "different training subset" not in notes["course"]
    assert "ACC@1 on imagenet-val:test, the published rows on all 50k" in notes["course"]
    assert "ImageNet-1k val (all 50k)" in out and "imagenet-val:test" in out


# ------------------------------------------------------------------------------ tune without apex


def test_a_tune_plan_without_apex_drops_the_apex_optimizers(tmp_path, run_cli, monkeypatch):
    from helpers.tune_fakes import launcher, write_recipes

    monkeypatch.setattr("clipctl.train.optim._apex_available", lambda: False)
    tune = write_recipes(
        tmp_path,
        """\
[tune]
base = "base.toml"
phase = 1
strategy = "random"
n_trials = 3
n_initial = 3
[tune.space]
"optim.name" = ["adamw", "fusedlamb", "radam", "fusednovograd"]
"optim.lr" = { low = 1e-4, high = 1e-2, prior = "log-uniform" }
""",
    )
    code, _, err = run_cli("tune", "--recipe", tune, "--study", tmp_path / "study", "--launcher", launcher())
    assert code == 0, err
    lines = [line for line in err.splitlines() if "dropped" in line]
    assert len(lines) == 1 and "fusedlamb, fusednovograd" in lines[0] and "apex" in lines[0]
    from clipctl.tune.phases import load_plan
    from clipctl.tune.store import Study

    plan = load_plan(Study(tmp_path / "study"), 1)
    assert plan.dropped["optim.name"] == ["fusedlamb", "fusednovograd"]
    assert plan.space.dims[0].categories == ("adamw", "radam")
    trials = Study(tmp_path / "study").state().phase(1).trials.values()
    assert {t.optimizer for t in trials} <= {"adamw", "radam"} and len(trials) == 3


# ------------------------------------------------------------------------------ the CPU tuning demo


def _shrunk_quick_recipe(phase: int, folder: Path, shapes: Path) -> Path:
    """recipes/tune/quick/phaseN.toml with overrides that cut trials, steps and data (the demo in seconds)."""
    import tomli_w

    from clipctl.recipe import apply_overrides, builtin_recipes_dir, find_recipe, load_raw, override_arg

    raw = load_raw(find_recipe(f"tune/quick/phase{phase}"))
    tiny = {
        "data.train": str(shapes / "train.json"),
        "eval.val_retrieval": str(shapes / "val.json"),
        "eval.val_zeroshot": str(shapes / "zeroshot_val"),
        "eval.test_retrieval": str(shapes / "test.json"),
        "eval.test_zeroshot": str(shapes / "zeroshot"),
        "data.image_size": 32,
        "data.num_workers": 0,
        "train.batch_size": 32,
        "train.max_steps": 2,
        "data.train_fraction": 0.5,
    }
    cuts = {
        1: ["tune.n_trials=2", "tune.n_initial=2"],
        2: ["tune.top_k=1", 'tune.space={ "optim.lr" = [1e-3] }'],
        3: ["tune.n_trials=1", "tune.n_initial=1"],
    }[phase]
    fixed = override_arg("v", {**raw["tune"]["fixed"], **tiny}).removeprefix("v=")
    base = json.dumps(str(builtin_recipes_dir() / "quickstart.toml"))
    raw = apply_overrides(raw, [*cuts, f"tune.fixed={fixed}", f"tune.base={base}"])
    path = folder / f"phase{phase}.toml"
    path.write_text(tomli_w.dumps(raw), encoding="utf-8")
    return path


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_quick_tune_recipes_run_three_phases_and_plot(tmp_path, data_root, run_cli, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr("clipctl.train.optim._apex_available", lambda: False)
    study, shapes = tmp_path / "study", make_tiny_shapes(data_root)
    for phase in (1, 2, 3):
        code, _, err = run_cli("tune", "--recipe", _shrunk_quick_recipe(phase, tmp_path, shapes), "--study", study)
        assert code == 0, err[-3000:]
        if phase == 1:
            assert "dropped fusedlamb" in err
    code, out, err = run_cli("tune", "status", "--study", study, "--json")
    assert code == 0, err
    code, _, err = run_cli("tune", "plot", "--study", study)
    assert code == 0, err
    plots = sorted(p.name for p in (study / "plots").glob("*.png"))
    assert any(name.startswith("phase1") for name in plots) and any(name.startswith("phase3") for name in plots)
