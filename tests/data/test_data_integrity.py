"""Downloads without a published hash (COCO's per-image fallback) are checked for what they claim to be and
recorded as unverified; a manifest that lacks `files` is one line, exit 3."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from helpers.data_server import serve_mirror
from PIL import Image

from clipctl.data import registry
from clipctl.data.records import RemoteFile


@pytest.fixture
def server(monkeypatch):
    yield from serve_mirror(monkeypatch, retries=2)


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 32), colour).save(buffer, format="JPEG")
    return buffer.getvalue()


NAMES = [f"val2014/COCO_val2014_{i:012d}.jpg" for i in range(1, 4)]
IMAGES = {name: _jpeg((60 * i, 200 - 50 * i, 30)) for i, name in enumerate(NAMES)}
HTML = b"<!DOCTYPE html><html><body>503 Service Temporarily Unavailable</body></html>"


@pytest.fixture
def coco(server, monkeypatch):
    """A 3-image Karpathy-test look-alike whose zip is gone: the images come one by one, without hashes."""
    annotations = json.dumps(
        [{"image": n, "caption": [f"picture {i} caption {k}" for k in range(5)]} for i, n in enumerate(NAMES)]
    ).encode()
    server.files["/coco-karpathy-test/coco_karpathy_test.json"] = annotations
    for name, data in IMAGES.items():
        server.files[f"/coco-karpathy-test/{name}"] = data
    spec = registry.REGISTRY["coco-karpathy-test"]
    import hashlib

    ann = RemoteFile(
        "coco_karpathy_test.json",
        "https://example.invalid/a.json",
        size=len(annotations),
        md5=hashlib.md5(annotations).hexdigest(),
    )
    zip_file = RemoteFile("val2014.zip", "https://example.invalid/val2014.zip", size=10, md5="0" * 32)
    monkeypatch.setitem(
        registry.REGISTRY,
        "coco-karpathy-test",
        dataclasses.replace(spec, expect={"images": 3, "captions_min": 15}, files=(ann, zip_file)),
    )
    return server


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("clipctl: error")]


def test_per_image_downloads_are_recorded_unverified_and_verify_says_so(coco, data_root, run_cli):
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    assert code == 0, err
    manifest = json.loads((data_root / "manifests" / "coco-karpathy-test.json").read_text())
    assert manifest["unverified"]["images"] == 3 and "no published checksum" in manifest["unverified"]["why"]
    assert "unverified: 3 images" in err
    code, _, err = run_cli("data", "verify", "coco-karpathy-test")
    assert code == 0 and "verified (captions 15, images 3)" in err and "unverified: 3 images" in err
    code, out, _ = run_cli("data", "ls", "--json")
    rows = {row["id"]: row for row in json.loads(out)["datasets"]}
    assert rows["coco-karpathy-test"]["unverified"]["images"] == 3


@pytest.mark.parametrize(
    "step, reason",
    [
        ({"body": HTML, "content_type": "text/html; charset=utf-8"}, "an HTML page"),
        ({"body": HTML}, "an HTML page"),  # no Content-Type to go by: sniffed
        ({"no_length": True, "truncate": 300}, "not a decodable image"),  # cut short, nothing says how long it was
    ],
)
def test_a_bad_body_without_a_hash_is_refused(coco, data_root, run_cli, step, reason):
    coco.script[f"/coco-karpathy-test/{NAMES[1]}"] = [dict(step) for _ in range(10)]
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    errors = _errors(err)
    assert code == 3 and len(errors) == 1 and reason in errors[0] and "Traceback" not in err
    assert (data_root / "downloads" / "quarantine" / "COCO_val2014_000000000002.jpg").is_file()
    assert not (data_root / "coco" / NAMES[1]).exists()
    assert not (data_root / "manifests" / "coco-karpathy-test.json").exists()  # nothing looks complete
    assert (data_root / "coco" / NAMES[0]).read_bytes() == IMAGES[NAMES[0]]  # the good ones are kept for a rerun


def test_a_transient_bad_body_is_fetched_again(coco, data_root, run_cli):
    coco.script[f"/coco-karpathy-test/{NAMES[2]}"] = [{"no_length": True, "truncate": 200}]
    code, _, err = run_cli("data", "fetch", "coco-karpathy-test")
    assert code == 0, err
    assert (data_root / "coco" / NAMES[2]).read_bytes() == IMAGES[NAMES[2]]


@pytest.mark.parametrize("files", [None, ["a list"], {"x.json": 3}])
def test_a_manifest_without_files_is_one_line_exit_3(data_root, run_cli, files):
    manifest = {"id": "coco-karpathy-test", "counts": {"images": 5000}}
    if files is not None:
        manifest["files"] = files
    path = data_root / "manifests" / "coco-karpathy-test.json"
    path.parent.mkdir()
    path.write_text(json.dumps(manifest))
    before = path.read_bytes()
    for command in (("data", "verify", "coco-karpathy-test"), ("data", "fetch", "coco-karpathy-test")):
        code, _, err = run_cli(*command)
        errors = _errors(err)
        assert code == 3 and len(errors) == 1 and "Traceback" not in err, err
        assert '"files"' in errors[0] and "--force" in errors[0] and str(path) in errors[0]
    assert path.read_bytes() == before
    code, out, _ = run_cli("data", "ls", "--json")
    assert code == 0 and not {r["id"]: r for r in json.loads(out)["datasets"]}["coco-karpathy-test"]["present"]
