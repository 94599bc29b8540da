"""Issue 26, the data gates: a user's folder gives regular files only, never through a link out of it (6); a
pairs JSON is checked entry by entry (9); a mirror's redirect loop or redirect to file:// is a data problem (11);
a stale `.part` starts over and runs with the same `shapes` settings started together share the data (12).

Every refusal is checked as the user sees it: exit 3, one `clipctl: error` line naming the file, no traceback,
and nothing made under the data root (no manifest, no dataset folder, no temp folder, no quarantined file).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.data_server import serve_mirror
from helpers.fake_files import jpeg_bytes, tar_bytes
from helpers.paths import REPO_ROOT
from test_data_sources import TRUTH, _devkit, _patch_imagenet

from clipctl.data import registry, shapes
from clipctl.data.coco import _from_local_folder
from clipctl.data.fetch import download
from clipctl.data.imagenet_classes import imagenet_wnids
from clipctl.data.lock import lock_path, one_maker
from clipctl.data.operations import training_subset
from clipctl.data.records import RemoteFile
from clipctl.errors import DataError
from clipctl.recipe import load_recipe

WNIDS = list(imagenet_wnids()[:3])


@pytest.fixture
def server(monkeypatch):
    yield from serve_mirror(monkeypatch, retries=2)


def _one_error(err: str) -> str:
    """The single `clipctl: error` line of stderr (and no traceback)."""
    errors = [line for line in err.splitlines() if line.startswith("clipctl: error")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def _nothing_made(data_root: Path, dataset_id: str, folder: str) -> None:
    assert not (data_root / "manifests" / f"{dataset_id}.json").exists()
    assert not (data_root / folder).exists()
    assert not [p.name for p in data_root.iterdir() if ".tmp-" in p.name]  # no temp folder left behind


# ------------------------------------------------------------------------- 6: regular files inside the folder


@pytest.fixture
def user_val(tmp_path, monkeypatch) -> Path:
    """$CLIPCTL_IMAGENET_DIR holding val/ of 3 real wnid folders, 2 JPEGs each; the registry expects 7 images,
    so a seventh entry decides whether the fetch passes."""
    for k, wnid in enumerate(WNIDS):
        (tmp_path / "mine" / "val" / wnid).mkdir(parents=True)
        for j in range(2):
            number = 2 * k + j + 1
            (tmp_path / "mine" / "val" / wnid / f"ILSVRC2012_val_{number:08d}.JPEG").write_bytes(
                jpeg_bytes((40 * number, 0, 0))
            )
    spec = dataclasses.replace(registry.REGISTRY["imagenet-val"], expect={"classes": 3, "images": 7})
    monkeypatch.setitem(registry.REGISTRY, "imagenet-val", spec)
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(tmp_path / "mine"))
    (tmp_path / "outside").mkdir()
    return tmp_path / "mine" / "val"


SEVENTH = "ILSVRC2012_val_00000007.JPEG"


@pytest.mark.timeout(60)  # a FIFO passed on would block: fail, do not hang the suite
@pytest.mark.parametrize("case", ["fifo", "link-out", "folder-link-out", "folder-named-jpeg"])
def test_imagenet_folder_with_a_non_regular_file_or_a_link_out_is_refused(case, user_val, tmp_path, data_root, run_cli):
    secret = tmp_path / "outside" / "secret.JPEG"
    secret.write_bytes(jpeg_bytes((9, 9, 9)))
    if case == "fifo":
        bad = user_val / WNIDS[0] / SEVENTH
        os.mkfifo(bad)
        words = "a FIFO (named pipe), not a regular file"
    elif case == "link-out":
        bad = user_val / WNIDS[0] / SEVENTH
        bad.symlink_to(secret)
        words = f"a link to {secret}, outside {user_val.parent}"
    elif case == "folder-link-out":  # the class folder itself leads out of the user's folder
        (tmp_path / "outside" / WNIDS[2]).mkdir()
        for name in os.listdir(user_val / WNIDS[2]):
            os.replace(user_val / WNIDS[2] / name, tmp_path / "outside" / WNIDS[2] / name)
        (user_val / WNIDS[2]).rmdir()
        (user_val / WNIDS[2]).symlink_to(tmp_path / "outside" / WNIDS[2], target_is_directory=True)
        bad = user_val / WNIDS[2] / "ILSVRC2012_val_00000005.JPEG"
        words = "outside"
    else:
        bad = user_val / WNIDS[1] / SEVENTH
        bad.mkdir()
        words = "a folder, not a regular file"
    before = sorted(str(p) for p in user_val.parent.rglob("*"))
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    line = _one_error(err)
    assert code == 3 and str(bad) in line and words in line
    _nothing_made(data_root, "imagenet-val", "imagenet-val")
    assert sorted(str(p) for p in user_val.parent.rglob("*")) == before  # the user's folder is untouched
    assert secret.stat().st_nlink == 1  # never hard-linked into the data root


def test_a_link_that_stays_inside_the_users_folder_is_followed(user_val, data_root, run_cli):
    (user_val.parent / "spare").mkdir()
    (user_val.parent / "spare" / "x.JPEG").write_bytes(jpeg_bytes((1, 200, 1)))
    (user_val / WNIDS[0] / SEVENTH).symlink_to(user_val.parent / "spare" / "x.JPEG")
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0, err
    linked = data_root / "imagenet-val" / WNIDS[0] / SEVENTH
    assert not linked.is_symlink() and linked.read_bytes() == jpeg_bytes((1, 200, 1))


def _flat_folder(tmp_path: Path, monkeypatch) -> Path:
    folder = tmp_path / "flat"
    folder.mkdir()
    for i in range(1, len(TRUTH) + 1):
        (folder / f"ILSVRC2012_val_{i:08d}.JPEG").write_bytes(jpeg_bytes((i * 40, 0, 0)))
    devkit = _devkit(TRUTH)
    (folder / "ILSVRC2012_devkit_t12.tar.gz").write_bytes(devkit)
    _patch_imagenet(monkeypatch, {"ILSVRC2012_devkit_t12.tar.gz": devkit})
    monkeypatch.setenv("CLIPCTL_IMAGENET_DIR", str(folder))
    return folder


@pytest.mark.timeout(60)
def test_flat_imagenet_files_with_a_fifo_are_refused(tmp_path, data_root, run_cli, monkeypatch):
    folder = _flat_folder(tmp_path, monkeypatch)
    (folder / "ILSVRC2012_val_00000003.JPEG").unlink()
    os.mkfifo(folder / "ILSVRC2012_val_00000003.JPEG")
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    line = _one_error(err)
    assert code == 3 and f"{folder / 'ILSVRC2012_val_00000003.JPEG'}: a FIFO" in line
    _nothing_made(data_root, "imagenet-val", "imagenet-val")


def test_an_imagenet_devkit_linked_from_outside_is_refused(tmp_path, data_root, run_cli, monkeypatch):
    folder = _flat_folder(tmp_path, monkeypatch)
    (tmp_path / "shared").mkdir()
    os.replace(folder / "ILSVRC2012_devkit_t12.tar.gz", tmp_path / "shared" / "ILSVRC2012_devkit_t12.tar.gz")
    (folder / "ILSVRC2012_devkit_t12.tar.gz").symlink_to(tmp_path / "shared" / "ILSVRC2012_devkit_t12.tar.gz")
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    line = _one_error(err)
    assert code == 3 and str(folder / "ILSVRC2012_devkit_t12.tar.gz") in line and "outside" in line
    _nothing_made(data_root, "imagenet-val", "imagenet-val")


@pytest.fixture
def course_pairs(tmp_path, monkeypatch) -> tuple[Path, Path, list[dict]]:
    """A course-style pairs JSON of 150 entries (past the first 100 a shape check looks at) and its images."""
    images = tmp_path / "course" / "images"
    images.mkdir(parents=True)
    entries = []
    for i in range(150):
        (images / f"{i:04d}.jpg").write_bytes(jpeg_bytes((i, 90, 90), (8, 8)))
        entries.append({"image": f"{i:04d}.jpg", "caption": f"thing {i}", "image_id": i})
    annotations = tmp_path / "course" / "cc3m_train_subset.json"
    annotations.write_text(json.dumps(entries))
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(annotations))
    monkeypatch.setenv("CLIPCTL_CC3M_IMAGES", str(images))
    spec = registry.REGISTRY["cc3m-100k"]
    monkeypatch.setitem(registry.REGISTRY, "cc3m-100k", dataclasses.replace(spec, expect={"pairs": 150}))
    return annotations, images, entries


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", ["fifo", "link-out"])
def test_cc3m_images_are_regular_files_inside_the_image_folder(case, course_pairs, tmp_path, data_root, run_cli):
    _, images, _ = course_pairs
    bad = images / "0120.jpg"
    bad.unlink()
    if case == "fifo":
        os.mkfifo(bad)
    else:
        (tmp_path / "private.jpg").write_bytes(jpeg_bytes((1, 1, 1)))
        bad.symlink_to(tmp_path / "private.jpg")
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    line = _one_error(err)
    assert code == 3 and str(bad) in line and ("FIFO" if case == "fifo" else "outside") in line
    _nothing_made(data_root, "cc3m-100k", "cc3m-100k")


def test_a_fifo_named_as_the_cc3m_source_is_refused(tmp_path, data_root, run_cli, monkeypatch):
    os.mkfifo(tmp_path / "pairs.json")
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(tmp_path / "pairs.json"))
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    line = _one_error(err)
    assert code == 3 and f"CLIPCTL_CC3M_ARCHIVE={tmp_path / 'pairs.json'}: a FIFO" in line
    _nothing_made(data_root, "cc3m-100k", "cc3m-100k")


@pytest.mark.timeout(30)
def test_a_fifo_among_a_cc3m_folders_json_files_is_refused(course_pairs, data_root, run_cli, monkeypatch):
    annotations, _, _ = course_pairs
    os.mkfifo(annotations.parent / "notes.json")
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(annotations.parent))
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    line = _one_error(err)
    assert code == 3 and f"{annotations.parent / 'notes.json'}: a FIFO" in line
    _nothing_made(data_root, "cc3m-100k", "cc3m-100k")


def test_coco_images_placed_in_downloads_must_be_regular_files_inside_it(tmp_path):
    downloads, folder = tmp_path / "downloads", tmp_path / "coco"
    (downloads / "val2014").mkdir(parents=True)
    (downloads / "val2014" / "a.jpg").write_bytes(jpeg_bytes((5, 5, 5)))
    (tmp_path / "elsewhere.jpg").write_bytes(jpeg_bytes((6, 6, 6)))
    (downloads / "val2014" / "b.jpg").symlink_to(tmp_path / "elsewhere.jpg")
    with pytest.raises(DataError, match="b.jpg: a link to .*elsewhere.jpg, outside") as err:
        _from_local_folder(folder, downloads, ["val2014/a.jpg", "val2014/b.jpg"])
    assert err.value.exit_code == 3 and not folder.exists()


@pytest.mark.timeout(30)
def test_a_fifo_in_place_of_a_download_is_refused_not_read(server, tmp_path):
    server.files["/ds/blob.bin"] = b"x" * 100
    dest = tmp_path / "downloads" / "blob.bin"
    dest.parent.mkdir()
    os.mkfifo(dest)
    with pytest.raises(DataError, match=r"blob.bin: a FIFO \(named pipe\), not a regular file") as err:
        download(f"{server.url}/ds/blob.bin", dest, RemoteFile("blob.bin", "", size=100), dataset_id="ds")
    assert err.value.exit_code == 3 and server.log == [] and sorted(os.listdir(dest.parent)) == ["blob.bin"]


# ------------------------------------------------------------------------------ 9: every JSON entry is checked


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"caption": "no image here", "image_id": 120}, 'entry 120 has no "image"'),
        ({"image": "0120.jpg", "caption": None, "image_id": 120}, 'entry 120: "caption" is null, not a string'),
        ({"image": 120, "caption": "a number", "image_id": 120}, 'entry 120: "image" is a number, not a string'),
        (["0120.jpg", "a list"], "entry 120 is a list, not an object"),
        ({"image": "../../etc/passwd", "caption": "out"}, "entry 120: image path '../../etc/passwd' refused ('..'"),
    ],
)
def test_cc3m_json_bad_entry_past_the_first_hundred_is_named(entry, words, course_pairs, data_root, run_cli):
    annotations, _, entries = course_pairs
    entries[120] = entry
    annotations.write_text(json.dumps(entries))
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    line = _one_error(err)
    assert code == 3 and str(annotations) in line and words in line
    _nothing_made(data_root, "cc3m-100k", "cc3m-100k")
    assert training_subset(str(annotations), data_root) is None  # not a pairs JSON: no subset, no KeyError


def test_cc3m_folder_source_checks_every_entry_of_the_json_it_picks(course_pairs, data_root, run_cli, monkeypatch):
    annotations, _, entries = course_pairs
    entries[149] = {"image": "0149.jpg", "caption": None}
    annotations.write_text(json.dumps(entries))
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(annotations.parent))
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    line = _one_error(err)
    assert code == 3 and str(annotations) in line and 'entry 149: "caption" is null' in line
    _nothing_made(data_root, "cc3m-100k", "cc3m-100k")


# --------------------------------------------------------------------------- 11: a mirror's bad redirects


ANNOTATION = "/coco-karpathy-test/coco_karpathy_test.json"


@pytest.mark.parametrize(
    "script, words",
    [
        ([{"redirect": ANNOTATION}] * 40, "redirects in a loop (over 30 redirects)"),
        ([{"redirect": "file:///etc/passwd"}], "leads to file:///etc/passwd, not an http(s) URL: refused"),
    ],
)
def test_a_mirror_redirect_loop_or_file_redirect_is_a_data_error(script, words, server, data_root, run_cli):
    server.script[ANNOTATION] = list(script)
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    line = _one_error(err)
    assert code == 3 and f"{server.url}{ANNOTATION}" in line and "coco_karpathy_test.json" in line and words in line
    assert "CLIPCTL_MIRROR" in line
    assert not (data_root / "downloads").exists() or sorted(os.listdir(data_root / "downloads")) == []
    _nothing_made(data_root, "coco-karpathy-test", "coco")


# ------------------------------------------------------------------------ 12: a stale .part starts over


HUB_TAR = "/imagenet-val/val_images.tar.gz"
CLASSES = (
    b'IMAGENET2012_CLASSES = OrderedDict(\n    {\n        "n01000001": "cat, true cat",\n'
    b'        "n02000002": "dog, domestic dog",\n        "n03000003": "bird",\n    }\n)\n'
)


@pytest.mark.parametrize("size_known", [False, True])
def test_a_stale_part_longer_than_the_file_starts_over(size_known, server, data_root, run_cli, monkeypatch):
    monkeypatch.delenv("CLIPCTL_IMAGENET_DIR", raising=False)
    wnid = {1: "n02000002", 2: "n01000001", 3: "n03000003"}
    members = {f"ILSVRC2012_val_{i:08d}_{wnid[t]}.JPEG": jpeg_bytes((i * 30, 0, 0)) for i, t in enumerate(TRUTH, 1)}
    archive = tar_bytes(members, gz=True)
    server.files[HUB_TAR], server.files["/imagenet-val/classes.py"] = archive, CLASSES
    _patch_imagenet(monkeypatch, {"val_images.tar.gz": archive, "classes.py": CLASSES} if size_known else {})
    part = data_root / "downloads" / "val_images.tar.gz.part"
    part.parent.mkdir()
    stale = archive + b"left over from another version of the file"
    part.write_bytes(stale)
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0 and "Traceback" not in err and "clipctl: error" not in err, err
    assert "starting over" in err
    requests_for_tar = [rng for path, rng in server.log if path == HUB_TAR]
    # size unknown: the server answers the resume with 416 and the fetch starts over; known: no resume is tried
    assert requests_for_tar == ([None] if size_known else [f"bytes={len(stale)}-", None])
    assert (data_root / "downloads" / "val_images.tar.gz").read_bytes() == archive and not part.exists()
    assert not (data_root / "downloads" / "quarantine").exists()
    assert (data_root / "manifests" / "imagenet-val.json").exists()


def test_a_part_of_exactly_the_files_length_is_kept_when_the_server_says_so(server, tmp_path):
    body = jpeg_bytes((3, 4, 5))
    server.files["/ds/a.jpg"] = body
    dest = tmp_path / "a.jpg"
    dest.with_name("a.jpg.part").write_bytes(body)
    download(f"{server.url}/ds/a.jpg", dest, RemoteFile("a.jpg", ""), dataset_id="ds")
    assert dest.read_bytes() == body and server.log == [("/ds/a.jpg", f"bytes={len(body)}-")]  # 416, complete


# -------------------------------------------------- 12: runs with the same shapes settings share the data


def _quick(train_size: int = 100):
    return load_recipe("quickstart", [f"data.shapes_train_size={train_size}", "data.shapes_image_size=32"])


def _slow_generation(monkeypatch, started: threading.Event) -> list[int]:
    """Make generation take a second (so a second run surely arrives during it); counts the generations."""
    real, calls = shapes.build_shapes, []

    def slow(*args, **kwargs):
        calls.append(1)
        started.set()
        time.sleep(1.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(shapes, "build_shapes", slow)
    return calls


@pytest.mark.slow
def test_two_runs_with_the_same_shapes_settings_started_together_share_it(data_root, monkeypatch, capsys):
    from clipctl.train.components import ensure_local_data

    started = threading.Event()
    calls = _slow_generation(monkeypatch, started)
    leases, errors = [], []

    def run() -> None:
        try:
            leases.append(ensure_local_data(_quick(), data_root))
        except DataError as err:
            errors.append(err)

    first = threading.Thread(target=run)
    first.start()
    assert started.wait(30)
    second = threading.Thread(target=run)
    second.start()
    first.join(60)
    second.join(60)
    try:
        assert errors == [] and len(leases) == 2 and all(lease.held == 1 for lease in leases)
        assert calls == [1] and "another process is making it" in capsys.readouterr().err  # it waited, then shared
        manifest = json.loads((data_root / "manifests" / "shapes.json").read_text())
        assert manifest["params"]["train_size"] == 100 and manifest["params"]["image_size"] == 32
        assert not [p.name for p in data_root.iterdir() if ".tmp-" in p.name]
    finally:
        for lease in leases:
            lease.release()


_CLI = """
import sys, time
from pathlib import Path
from clipctl.cli import main
from clipctl.data import shapes

real = shapes.build_shapes
def slow(*args, **kwargs):
    time.sleep(1.5)  # the other process surely asks while this one generates
    return real(*args, **kwargs)
shapes.build_shapes = slow
Path(sys.argv[1]).touch()
while len(list(Path(sys.argv[1]).parent.glob("ready-*"))) < 2:  # start together
    time.sleep(0.01)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_shapes_fetches_started_together_share_one_generation(tmp_path, data_root):
    (tmp_path / "sync").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    args = ["data", "fetch", "shapes", "--train-size", "100", "--image-size", "32"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CLI, str(tmp_path / "sync" / f"ready-{i}"), *args],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = [(proc.wait(100), proc.stderr.read()) for proc in procs]
    for proc in procs:
        proc.stdout.close()
        proc.stderr.close()
    assert [code for code, _ in results] == [0, 0], results
    assert all("Traceback" not in err and "clipctl: error" not in err for _, err in results)
    said = sorted("generated and verified" in err for _, err in results)
    assert said == [False, True]  # one generated, the other waited for it and verified its copy
    assert any("already present and verified" in err for _, err in results)
    assert json.loads((data_root / "manifests" / "shapes.json").read_text())["params"]["train_size"] == 100
    assert not [p.name for p in data_root.iterdir() if ".tmp-" in p.name]


def test_a_maker_that_never_finishes_is_one_line_after_the_wait(tmp_path):
    with one_maker(tmp_path, "shapes"):
        outcome: list[BaseException] = []

        def second() -> None:
            try:
                with one_maker(tmp_path, "shapes", wait_s=0.3):
                    pass
            except DataError as err:
                outcome.append(err)

        worker = threading.Thread(target=second)
        worker.start()
        worker.join(10)
    assert len(outcome) == 1 and outcome[0].exit_code == 3 and "\n" not in str(outcome[0])
    assert str(lock_path(tmp_path, "shapes", ".make")) in str(outcome[0])
