"""Real-dataset preparation on tiny look-alikes: ImageNet from a local tar + devkit and from the hub layout,
CC3M from hub shards, from a local archive and from a TSV of URLs (dead links skipped)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile

import numpy as np
import pytest
from helpers.data_server import serve_mirror
from helpers.fake_files import jpeg_bytes, tar_bytes

from clipctl.data import registry
from clipctl.data.datasets import ClassificationDataset, PairsDataset
from clipctl.data.registry import resolve
from clipctl.data.transforms import eval_transform


@pytest.fixture
def server(monkeypatch):
    yield from serve_mirror(monkeypatch, retries=2)


def _devkit(truth: list[int]) -> bytes:
    from scipy.io import savemat

    dtype = [("ILSVRC2012_ID", "O"), ("WNID", "O"), ("words", "O"), ("num_children", "O")]
    synsets = np.array(
        [
            (1, "n02000002", "dog, domestic dog", 0),
            (2, "n01000001", "cat, true cat", 0),
            (3, "n03000003", "bird", 0),
            (4, "n00000000", "animal", 3),
        ],
        dtype=dtype,
    )
    meta = io.BytesIO()
    savemat(meta, {"synsets": synsets})
    return tar_bytes(
        {
            "ILSVRC2012_devkit_t12/data/meta.mat": meta.getvalue(),
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt": "".join(
                f"{t}\n" for t in truth
            ).encode(),
        },
        gz=True,
    )


TRUTH = [2, 1, 3, 1, 2, 3]  # ILSVRC2012 ids of val images 1..6
WNID = {1: "n02000002", 2: "n01000001", 3: "n03000003"}


def _patch_imagenet(monkeypatch, files: dict[str, bytes]) -> None:
    spec = registry.REGISTRY["imagenet-val"]
    remote = tuple(
        dataclasses.replace(
            f,
            size=len(files[f.name]) if f.name in files else None,
            md5=hashlib.md5(files[f.name]).hexdigest() if f.name in files else None,
        )
        for f in spec.files
    )
    monkeypatch.setitem(
        registry.REGISTRY, "imagenet-val", dataclasses.replace(spec, files=remote, expect={"classes": 3, "images": 6})
    )


def test_imagenet_from_local_tar_and_devkit(tmp_path, data_root, run_cli, monkeypatch):
    colours = [(200, 0, 0), (0, 200, 0), (0, 0, 200), (200, 200, 0), (0, 200, 200), (200, 0, 200)]
    val = tar_bytes({f"ILSVRC2012_val_{i:08d}.JPEG": jpeg_bytes(c) for i, c in enumerate(colours, 1)})
    files = {"ILSVRC2012_img_val.tar": val, "ILSVRC2012_devkit_t12.tar.gz": _devkit(TRUTH)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    _patch_imagenet(monkeypatch, files)
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(tmp_path))
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0, err
    assert "research" in err  # licence terms printed
    ds = ClassificationDataset(resolve("imagenet-val", data_root), eval_transform(16))
    assert ds.class_ids == ["n01000001", "n02000002", "n03000003"] and ds.classnames == ["cat", "dog", "bird"]
    got = {p.name: ds.class_ids[label] for p, label in ds.samples}
    assert got == {f"ILSVRC2012_val_{i:08d}.JPEG": WNID[t] for i, t in enumerate(TRUTH, 1)}
    assert (tmp_path / "ILSVRC2012_img_val.tar").exists()  # the user's files are read in place, not moved
    assert run_cli("data", "verify", "imagenet-val")[0] == 0


def test_imagenet_local_file_with_wrong_md5_is_left_in_place(tmp_path, data_root, run_cli, monkeypatch):
    files = {
        "ILSVRC2012_img_val.tar": tar_bytes({"ILSVRC2012_val_00000001.JPEG": jpeg_bytes((1, 2, 3))}),
        "ILSVRC2012_devkit_t12.tar.gz": _devkit(TRUTH),
    }
    _patch_imagenet(monkeypatch, files)
    (tmp_path / "ILSVRC2012_img_val.tar").write_bytes(files["ILSVRC2012_img_val.tar"][:-512] + b"\1" * 512)
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(files["ILSVRC2012_devkit_t12.tar.gz"])
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(tmp_path))
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 3 and "md5 mismatch" in err and f"left at {tmp_path}" in err
    assert (tmp_path / "ILSVRC2012_img_val.tar").exists()


def test_imagenet_from_hub_layout_via_mirror(server, data_root, run_cli, monkeypatch):
    monkeypatch.delenv("CLIPCTL_IMAGENET_DIR", raising=False)
    members = {f"ILSVRC2012_val_{i:08d}_{WNID[t]}.JPEG": jpeg_bytes((i * 30, 0, 0)) for i, t in enumerate(TRUTH, 1)}
    classes = (
        b'IMAGENET2012_CLASSES = OrderedDict(\n    {\n        "n01000001": "cat, true cat",\n'
        b'        "n02000002": "dog, domestic dog",\n        "n03000003": "bird",\n    }\n)\n'
    )
    server.files["/imagenet-val/val_images.tar.gz"] = tar_bytes(members, gz=True)
    server.files["/imagenet-val/classes.py"] = classes
    _patch_imagenet(monkeypatch, {})
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0, err
    ds = ClassificationDataset(resolve("imagenet-val:val", data_root), eval_transform(16))
    assert ds.classnames == ["cat", "dog", "bird"] and len(ds) == 6 and ds.labels.tolist() == [0, 0, 1, 1, 2, 2]


def _patch_cc3m(monkeypatch, pairs: int) -> None:
    spec = registry.REGISTRY["cc3m-100k"]
    monkeypatch.setitem(registry.REGISTRY, "cc3m-100k", dataclasses.replace(spec, expect={"pairs": pairs}))


def _wds_shard(samples: list[tuple[str, bytes, str]]) -> bytes:
    members = {}
    for key, image, caption in samples:
        members[f"{key}.jpg"], members[f"{key}.txt"] = image, caption.encode()
    return tar_bytes(members)


def test_cc3m_from_hub_shards_via_mirror(server, data_root, run_cli, monkeypatch):
    monkeypatch.delenv("CLIPCTL_CC3M_ARCHIVE", raising=False)
    monkeypatch.delenv("CLIPCTL_CC3M_TSV", raising=False)
    server.files["/cc3m-100k/cc3m-train-0000.tar"] = _wds_shard(
        [
            ("000000000", jpeg_bytes((255, 0, 0), (400, 300)), "a big red image"),
            ("000000001", b"broken", "dropped"),
            ("000000002", jpeg_bytes((0, 255, 0)), "green"),
        ]
    )
    server.files["/cc3m-100k/cc3m-train-0001.tar"] = _wds_shard(
        [
            ("000000003", jpeg_bytes((0, 0, 255)), "blue"),
            ("000000004", jpeg_bytes((9, 9, 9)), "dark"),
            ("000000005", jpeg_bytes((1, 1, 1)), "unused"),
        ]
    )
    _patch_cc3m(monkeypatch, 4)
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    assert code == 0, err
    assert "Conceptual Captions" in err
    assert "/cc3m-100k/cc3m-train-0002.tar" not in [p for p, _ in server.log]  # stops once 100k (here 4) pairs are made
    path = resolve("cc3m-100k", data_root)
    ds = PairsDataset(path, eval_transform(16))
    assert path.name == "shards" and ds.captions == ["a big red image", "green", "blue", "dark"]
    assert ds.image(0).size == (341, 256)  # ratio kept, shorter side set to 256
    manifest = json.loads((data_root / "manifests" / "cc3m-100k.json").read_text())
    assert manifest["counts"]["pairs"] == 4 and set(manifest["downloads"]) == {
        "cc3m-train-0000.tar",
        "cc3m-train-0001.tar",
    }
    assert manifest["unverified"]["files"] == 2  # a plain mirror publishes no checksums
    assert run_cli("data", "verify", "cc3m-100k")[0] == 0


def test_cc3m_from_a_local_archive(tmp_path, data_root, run_cli, monkeypatch):
    archive = tmp_path / "cc3m_subset.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in range(3):
            zf.writestr(f"course/cc3m_subset_100k/{i}.jpg", jpeg_bytes((i * 60, 10, 10)))
        zf.writestr(
            "course/clip_train/cc3m_train_subset.json",
            json.dumps(
                [{"image": f"cc3m_subset_100k/{i}.jpg", "caption": f"Caption {i}.", "image_id": i} for i in range(3)]
            ),
        )
        zf.writestr("course/notes.json", json.dumps({"not": "pairs"}))
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(archive))
    _patch_cc3m(monkeypatch, 3)
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    assert code == 0, err
    ds = PairsDataset(resolve("cc3m-100k", data_root), eval_transform(16))
    assert ds.captions == ["caption 0", "caption 1", "caption 2"] and len(ds) == 3
    assert run_cli("data", "verify", "cc3m-100k")[0] == 0


def test_cc3m_from_a_tsv_skips_dead_links(server, tmp_path, data_root, run_cli, monkeypatch):
    monkeypatch.delenv("CLIPCTL_CC3M_ARCHIVE", raising=False)
    for i in range(5):
        if i != 1:
            server.files[f"/img/{i}.jpg"] = jpeg_bytes((i * 40, 0, 0))
    server.files["/img/3.jpg"] = b"<html>not an image</html>"
    tsv = tmp_path / "cc3m.tsv"
    tsv.write_text("".join(f"caption number {i}\t{server.url}/img/{i}.jpg\n" for i in range(5)))
    monkeypatch.setenv("CLIPCTL_CC3M_TSV", str(tsv))
    _patch_cc3m(monkeypatch, 3)
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    assert code == 0, err
    ds = PairsDataset(resolve("cc3m-100k", data_root), eval_transform(16))
    assert ds.captions == ["caption number 0", "caption number 2", "caption number 4"]


def test_imagenet_class_text_uses_the_vendored_openai_names_for_the_real_classes():
    from clipctl.data.imagenet import class_text
    from clipctl.data.imagenet_classes import imagenet_wnids

    names, templates = class_text(list(imagenet_wnids()), {})
    assert len(names) == 1000 and names[0] == "tench" and len(templates) == 80
    assert class_text(["n01000001"], {"n01000001": "cat, true cat"}) == (["cat"], ["a photo of a {}."])
