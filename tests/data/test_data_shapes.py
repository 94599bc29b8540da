"""The `shapes` benchmark: determinism, content, long tail, caption noise, CLI fetch/verify, speed."""

from __future__ import annotations

import collections
import json
import os
import time
from pathlib import Path

import pytest
from PIL import Image

from clipctl.data import shapes
from clipctl.data.operations import ensure_for_run
from clipctl.data.registry import resolve
from clipctl.data.shapes import CLASSNAMES, ShapesConfig, generate_shapes

SMALL = ShapesConfig(seed=3, train_size=120, eval_images=20, zeroshot_val_per_class=1, zeroshot_per_class=2)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes-a")
    generate_shapes(root, SMALL, workers=2)
    return root


def test_same_seed_gives_byte_identical_files(small, tmp_path):
    generate_shapes(tmp_path, SMALL, workers=1)  # another worker count: same bytes
    first, second = _files(small), _files(tmp_path)
    assert first.keys() == second.keys() and len(first) > 300
    assert all(first[name] == second[name] for name in first)
    other = tmp_path / "other"
    generate_shapes(other, ShapesConfig(**{**SMALL.__dict__, "seed": 4}), workers=1)
    assert (other / "shapes" / "train.json").read_bytes() != first["shapes/train.json"]


def test_manifest_records_annotation_hashes(small):
    manifest = json.loads((small / "manifests" / "shapes.json").read_text())
    assert set(manifest["files"]) == {
        "train.json",
        "train_labels.json",
        "val.json",
        "test.json",
        "zeroshot_val/classnames.txt",
        "zeroshot_val/templates.txt",
        "zeroshot/classnames.txt",
        "zeroshot/templates.txt",
    }
    assert manifest["params"]["seed"] == 3 and manifest["images"]["count"] == 120 + 40 + 64 * 3
    shapes.verify_shapes(small)


def test_formats_and_content(small):
    root = small / "shapes"
    pairs = json.loads((root / "train.json").read_text())
    assert len(pairs) == 120 and pairs[7] == {
        "image": "train/000007.png",
        "caption": pairs[7]["caption"],
        "image_id": 7,
    }
    image = Image.open(root / pairs[0]["image"])
    assert image.size == (64, 64) and image.mode == "RGB"
    for split in ("val", "test"):
        entries = json.loads((root / f"{split}.json").read_text())
        assert len(entries) == 20 and all(len(e["caption"]) == 5 and len(set(e["caption"])) >= 3 for e in entries)
    for split, per_class in (("zeroshot_val", 1), ("zeroshot", 2)):
        folders = sorted(p for p in (root / split).iterdir() if p.is_dir())
        assert len(folders) == 64 and all(len(list(f.glob("*.png"))) == per_class for f in folders)
        names = (root / split / "classnames.txt").read_text().splitlines()
        assert names == list(CLASSNAMES) and names[0] == "red circle" and len(set(names)) == 64
        assert [f.name.split("_", 1)[1].replace("_", " ") for f in folders] == names
        templates = (root / split / "templates.txt").read_text().splitlines()
        assert len(templates) >= 5 and all("{}" in t for t in templates)


def test_long_tail_noise_and_partial_captions():
    config = ShapesConfig(seed=0, train_size=3000, eval_images=10, zeroshot_val_per_class=1, zeroshot_per_class=1)
    _, annotations = shapes._plan(config)
    labels = annotations["train_labels.json"]
    counts = collections.Counter(c for objs in labels["classes"] for c in objs)
    ranked = [counts.get(c, 0) for c in range(64)]
    ranked.sort(reverse=True)
    assert len(counts) >= 60 and ranked[0] > 15 * max(ranked[-8], 1)  # Zipf(1): head ~64x the tail
    probs = shapes.zipf_probabilities(0, 1.0)
    assert (
        max(probs) / min(probs) == pytest.approx(64.0) and sorted(probs) != probs
    )  # a seeded permutation, not class order
    assert shapes.zipf_probabilities(1, 1.0) != probs
    clean = ShapesConfig(**{**config.__dict__, "noise_fraction": 0.0})
    _, clean_annotations = shapes._plan(clean)
    noisy_ids = labels["noisy"]
    assert len(noisy_ids) == 300
    noisy_pairs, clean_pairs = annotations["train.json"], clean_annotations["train.json"]
    changed = [i for i in range(3000) if noisy_pairs[i]["caption"] != clean_pairs[i]["caption"]]
    assert set(changed) <= set(noisy_ids) and len(changed) >= 250
    assert sorted(noisy_pairs[i]["caption"] for i in noisy_ids) == sorted(clean_pairs[i]["caption"] for i in noisy_ids)
    multi = [i for i in range(3000) if len(labels["classes"][i]) > 1 and i not in set(noisy_ids)]
    partial = [
        i for i in multi if sum(clean_pairs[i]["caption"].count(s) for s in shapes.SHAPES) < len(labels["classes"][i])
    ]
    assert 0.2 < len(partial) / len(multi) < 0.6  # web-like captions mention only some objects


def test_cli_fetch_generates_then_verifies_and_detects_tampering(data_root, run_cli):
    code, _, err = run_cli("data", "fetch", "shapes", "--train-size", "150", "--image-size", "32")
    assert code == 0, err
    assert "generated" in err
    code, _, err = run_cli("data", "fetch", "shapes", "--train-size", "150", "--image-size", "32")
    assert code == 0 and "already present and verified" in err
    manifest = (data_root / "manifests" / "shapes.json").read_bytes()
    ensure_for_run(["shapes:train"], data_root, {"shapes_train_size": 150, "shapes_image_size": 32}).release()
    assert (data_root / "manifests" / "shapes.json").read_bytes() == manifest  # a run with these options uses it
    from clipctl.data.datasets import ClassificationDataset, PairsDataset, RetrievalDataset
    from clipctl.data.transforms import eval_transform

    train = PairsDataset(resolve("shapes:train", data_root), eval_transform(32))
    val = RetrievalDataset(resolve("shapes:val", data_root), eval_transform(32))
    test = RetrievalDataset(resolve("shapes:test", data_root), eval_transform(32))
    zs = ClassificationDataset(resolve("shapes:zeroshot", data_root), eval_transform(32))
    zs_val = ClassificationDataset(resolve("shapes:zeroshot_val", data_root), eval_transform(32))
    assert len(train) == 150 and len(val) == len(test) == 1000 and len(val.captions) == 5000
    assert len(zs.classnames) == 64 and len(zs) >= 64 * 20 and len(zs_val) >= 64 * 20 and zs[0][0].shape == (3, 32, 32)
    assert run_cli("data", "verify", "shapes")[0] == 0
    code, out, _ = run_cli("data", "ls", "--json")
    assert {r["id"]: r for r in json.loads(out)["datasets"]}["shapes"]["present"]
    victim = data_root / "shapes" / "val" / "000003.png"
    victim.write_bytes(victim.read_bytes()[:-10])
    code, _, err = run_cli("data", "verify", "shapes")
    assert code == 3 and "images differ" in err
    code, _, err = run_cli("data", "fetch", "coco-val-5k", "--train-size", "10")
    assert code == 2 and "only for `clipctl data fetch shapes`" in err


@pytest.mark.slow
def test_default_generation_takes_at_most_30_seconds(tmp_path):
    """The target is for 2 free cores; on a machine busy with other work the timing says nothing, so skip."""
    start = time.monotonic()
    generate_shapes(tmp_path, ShapesConfig(), workers=2)
    elapsed = time.monotonic() - start
    manifest = json.loads((tmp_path / "manifests" / "shapes.json").read_text())
    assert manifest["counts"]["train"] == 20_000 and manifest["images"]["count"] == 20_000 + 2_000 + 64 * 45
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if elapsed > 30 and load > cores + 1:
        pytest.skip(f"machine busy (load {load:.1f} on {cores} cores): generation took {elapsed:.1f} s, target 30 s")
    assert elapsed <= 30, f"default shapes generation took {elapsed:.1f} s (load {load:.1f} on {cores} cores)"
