"""Downloads against a local HTTP server (CLIPCTL_MIRROR): resume, redirects, retries, truncation,
checksums and quarantine, gated sources, no network, safe extraction, and a COCO-shaped fetch end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import socket
import tarfile
import zipfile
from pathlib import Path

import pytest
from helpers.data_server import serve_mirror
from PIL import Image

from clipctl.data import fetch, registry
from clipctl.data.archive import extract
from clipctl.data.fetch import FetchPolicy, download
from clipctl.data.records import RemoteFile
from clipctl.errors import DataError


@pytest.fixture
def server(monkeypatch):
    yield from serve_mirror(monkeypatch, retries=3)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 16), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


BLOB = bytes(range(256)) * 400  # 102,400 bytes


def _remote(name: str, data: bytes, **kw) -> RemoteFile:
    return RemoteFile(name, f"https://example.invalid/{name}", size=len(data), md5=_md5(data), **kw)


def test_download_verifies_and_renames_atomically(server, tmp_path):
    server.files["/ds/blob.bin"] = BLOB
    dest = tmp_path / "downloads" / "blob.bin"
    result = download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert dest.read_bytes() == BLOB and not dest.with_name("blob.bin.part").exists()
    assert result["sha256"] == hashlib.sha256(BLOB).hexdigest() and result["size"] == len(BLOB)
    server.log.clear()
    download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert server.log == []  # an existing verified file is not fetched again


def test_resume_of_half_written_part(server, tmp_path):
    server.files["/ds/blob.bin"] = BLOB
    dest = tmp_path / "blob.bin"
    half = len(BLOB) // 2
    dest.with_name("blob.bin.part").write_bytes(BLOB[:half])
    download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert server.log == [("/ds/blob.bin", f"bytes={half}-")]
    assert dest.read_bytes() == BLOB


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/ds/blob.bin"] = BLOB
    server.script["/ds/blob.bin"] = [{"ignore_range": True}]
    dest = tmp_path / "blob.bin"
    dest.with_name("blob.bin.part").write_bytes(BLOB[:1000])
    download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert dest.read_bytes() == BLOB


def test_redirect_is_followed(server, tmp_path):
    server.files["/elsewhere/blob.bin"] = BLOB
    server.script["/ds/blob.bin"] = [{"redirect": "/elsewhere/blob.bin"}]
    dest = tmp_path / "blob.bin"
    download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert dest.read_bytes() == BLOB and [p for p, _ in server.log] == ["/ds/blob.bin", "/elsewhere/blob.bin"]


def test_truncated_body_is_resumed(server, tmp_path):
    server.files["/ds/blob.bin"] = BLOB
    server.script["/ds/blob.bin"] = [{"truncate": 30_000}]
    dest = tmp_path / "blob.bin"
    download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert dest.read_bytes() == BLOB
    assert (
        server.log[0] == ("/ds/blob.bin", None)
        and server.log[1][1] is not None
        and server.log[1][1].startswith("bytes=")
    )


def test_truncated_every_time_keeps_the_part_and_says_resume(server, tmp_path):
    server.files["/ds/blob.bin"] = BLOB
    server.script["/ds/blob.bin"] = [{"status": 503}] * 10
    dest = tmp_path / "blob.bin"
    with pytest.raises(DataError, match="run the command again to resume"):
        download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert not dest.exists()


def test_5xx_then_success_is_retried(server, tmp_path):
    server.files["/ds/blob.bin"] = BLOB
    server.script["/ds/blob.bin"] = [{"status": 503}, {"status": 500}]
    dest = tmp_path / "blob.bin"
    download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    assert dest.read_bytes() == BLOB and len(server.log) == 3


def test_wrong_hash_is_quarantined_with_a_clear_message(server, tmp_path):
    good = tmp_path / "downloads" / "other.bin"
    good.parent.mkdir()
    good.write_bytes(b"complete and untouched")
    server.files["/ds/blob.bin"] = BLOB[::-1]  # same size, other content
    dest = tmp_path / "downloads" / "blob.bin"
    with pytest.raises(DataError) as err:
        download(f"{server.url}/ds/blob.bin", dest, _remote("blob.bin", BLOB), dataset_id="ds")
    message = str(err.value)
    assert "\n" not in message and "md5 mismatch" in message
    assert f"expected {_md5(BLOB)}" in message and f"actual {_md5(BLOB[::-1])}" in message
    assert (tmp_path / "downloads" / "quarantine" / "blob.bin").read_bytes() == BLOB[::-1]
    assert not dest.exists() and not dest.with_name("blob.bin.part").exists()
    assert good.read_bytes() == b"complete and untouched"


@pytest.mark.parametrize("status", [401, 403])
def test_gated_answer_names_what_to_provide(server, tmp_path, status):
    server.script["/ds/blob.bin"] = [{"status": status}]
    with pytest.raises(DataError) as err:
        download(
            f"{server.url}/ds/blob.bin",
            tmp_path / "blob.bin",
            _remote("blob.bin", BLOB),
            dataset_id="ds",
            access_hint="set HF_TOKEN or put the file in $CLIPCTL_X",
        )
    assert f"answered {status}" in str(err.value) and "HF_TOKEN" in str(err.value) and "gated" in str(err.value)


def test_imagenet_gated_message_via_cli(server, data_root, run_cli, monkeypatch):
    monkeypatch.delenv("CLIPCTL_IMAGENET_DIR", raising=False)
    server.script["/imagenet-val/classes.py"] = [{"status": 401}]
    server.script["/imagenet-val/val_images.tar.gz"] = [{"status": 401}]
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    lines = [line for line in err.splitlines() if line.startswith("clipctl: error")]
    assert code == 3 and len(lines) == 1
    assert "CLIPCTL_IMAGENET_DIR" in lines[0] and "HF_TOKEN" in lines[0] and "ILSVRC2012_img_val.tar" in lines[0]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_is_one_line_exit_3(data_root, run_cli, monkeypatch):
    monkeypatch.setenv("CLIPCTL_MIRROR", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(fetch, "POLICY", FetchPolicy(retries=2, backoff_s=0.01))
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    errors = [line for line in err.splitlines() if line.startswith("clipctl: error")]
    assert code == 3 and len(errors) == 1 and "cannot reach 127.0.0.1" in errors[0] and "Traceback" not in err


# ------------------------------------------------------------------------------------- safe extraction


def _tar_with(tmp_path: Path, members: list[tarfile.TarInfo]) -> Path:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        ok = tarfile.TarInfo("fine/ok.txt")
        ok.size = 2
        tar.addfile(ok, io.BytesIO(b"ok"))
        for info in members:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def _file(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = 1
    return info


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


@pytest.mark.parametrize(
    "member, reason",
    [
        (_file("../escape.txt"), "'..' in path"),
        (_file("/tmp/abs-escape.txt"), "absolute path"),
        (_file("fine/../../escape.txt"), "'..' in path"),
        (_link("fine/link", "../../escape.txt"), "outside the target"),
        (_link("fine/abs-link", "/etc/passwd"), "outside the target"),
        (_link("fine/hard", "../escape.txt", tarfile.LNKTYPE), "outside the target"),
    ],
)
def test_unsafe_tar_members_are_refused_and_nothing_is_written(tmp_path, member, reason):
    archive = _tar_with(tmp_path, [member])
    target = tmp_path / "work" / "out"
    target.parent.mkdir()
    with pytest.raises(DataError, match=reason):
        extract(archive, target)
    assert not target.exists() and list(target.parent.iterdir()) == []
    assert not (tmp_path / "escape.txt").exists() and not Path("/tmp/abs-escape.txt").exists()


def test_unsafe_zip_member_is_refused(tmp_path):
    archive = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("fine/ok.txt", "ok")
        zf.writestr("../escape.txt", "x")
    with pytest.raises(DataError, match=r"'\.\.' in path"):
        extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "escape.txt").exists()


def test_safe_archive_extracts_selected_members(tmp_path):
    archive = tmp_path / "good.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a/1.txt", "1")
        zf.writestr("a/2.txt", "2")
    assert extract(archive, tmp_path / "out", select=lambda n: n.endswith("2.txt")) == ["a/2.txt"]
    assert (tmp_path / "out" / "a" / "2.txt").read_text() == "2" and not (tmp_path / "out" / "a" / "1.txt").exists()


# ---------------------------------------------------------------------------------- coco end to end


@pytest.fixture
def coco_fixture(server, monkeypatch):
    """A 4-image, 20-caption Karpathy-test look-alike served as the registry's two files."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
    names = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in range(1, 5)]
    images = {name: _jpeg(c) for name, c in zip(names, colours)}
    annotations = [
        {"image": name, "caption": [f"A photo, number {i}; caption {k}!" for k in range(5)], "image_id": i}
        for i, name in enumerate(names)
    ]
    ann_bytes = json.dumps(annotations).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in images.items():
            zf.writestr(name, data)
        zf.writestr("val2014/COCO_val2014_999999999999.jpg", _jpeg((0, 0, 0)))  # not needed: not extracted
    zip_bytes = buffer.getvalue()
    server.files["/coco-karpathy-test/coco_karpathy_test.json"] = ann_bytes
    server.files["/coco-karpathy-test/val2014.zip"] = zip_bytes
    for name, data in images.items():
        server.files[f"/coco-karpathy-test/{name}"] = data
    spec = registry.REGISTRY["coco-karpathy-test"]
    fixture_spec = dataclasses.replace(
        spec,
        expect={"images": 4, "captions_min": 20},
        files=(_remote("coco_karpathy_test.json", ann_bytes), _remote("val2014.zip", zip_bytes)),
    )
    monkeypatch.setitem(registry.REGISTRY, "coco-karpathy-test", fixture_spec)
    return {"images": images, "annotations": annotations, "ann_bytes": ann_bytes}


def test_coco_shaped_fetch_end_to_end(coco_fixture, server, data_root, run_cli):
    from clipctl.data.datasets import RetrievalDataset
    from clipctl.data.transforms import eval_transform

    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    assert code == 0, err
    assert "CC BY 4.0" in err  # licence printed at fetch
    path = registry.resolve("coco-karpathy-test", data_root)
    assert path == data_root / "coco" / "karpathy_test.json"
    for name, data in coco_fixture["images"].items():
        assert (data_root / "coco" / name).read_bytes() == data
    assert not (data_root / "coco" / "val2014" / "COCO_val2014_999999999999.jpg").exists()
    manifest = json.loads((data_root / "manifests" / "coco-karpathy-test.json").read_text())
    assert manifest["counts"] == {"images": 4, "captions": 20} and manifest["verified"]
    assert manifest["downloads"]["coco_karpathy_test.json"]["md5"] == _md5(coco_fixture["ann_bytes"])
    dataset = RetrievalDataset(path, eval_transform(32))
    assert len(dataset) == 4 and len(dataset.captions) == 20 and dataset.captions[0] == "a photo number 0 caption 0"
    assert dataset[0].shape == (3, 32, 32)

    server.log.clear()
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    assert code == 0 and "already present and verified" in err and server.log == []
    assert run_cli("data", "verify", "coco-karpathy-test")[0] == 0
    code, out, _ = run_cli("data", "ls", "--json")
    rows = {row["id"]: row for row in json.loads(out)["datasets"]}
    assert rows["coco-karpathy-test"]["present"] and not rows["imagenet-val"]["present"]

    (data_root / "coco" / "val2014" / "COCO_val2014_000000000002.jpg").write_bytes(_jpeg((1, 2, 3)))
    code, _, err = run_cli("data", "verify", "coco-karpathy-test")
    assert code == 3 and "images differ" in err


def test_coco_falls_back_to_per_image_downloads(coco_fixture, server, data_root, run_cli):
    del server.files["/coco-karpathy-test/val2014.zip"]
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    assert code == 0, err
    assert "trying the next source" in err
    for name, data in coco_fixture["images"].items():
        assert (data_root / "coco" / name).read_bytes() == data


def test_coco_wrong_annotation_hash_via_cli(coco_fixture, server, data_root, run_cli):
    server.files["/coco-karpathy-test/coco_karpathy_test.json"] = coco_fixture["ann_bytes"].replace(b"photo", b"PHOTO")
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    errors = [line for line in err.splitlines() if line.startswith("clipctl: error")]
    assert code == 3 and len(errors) == 1 and "md5 mismatch" in errors[0] and "quarantine" in errors[0]
    assert (data_root / "downloads" / "quarantine" / "coco_karpathy_test.json").exists()
    assert not (data_root / "manifests" / "coco-karpathy-test.json").exists()
    with pytest.raises(DataError, match="data fetch coco-karpathy-test"):
        registry.resolve("coco-karpathy-test", data_root)
