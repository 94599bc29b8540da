"""Hub files (the CC3M shards, the HF ImageNet copy) go through huggingface_hub against a local fake hub
(`HF_ENDPOINT` at 127.0.0.1): pinned revision, its cache, the token, `allow_patterns`; then the sha256 is
checked (the registry's, else the hub's own) and a wrong one is refused, one line, exit 3."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest
from helpers.fake_files import jpeg_bytes, tar_bytes
from helpers.hub_server import serve_hub, start_hub
from helpers.paths import REPO_ROOT

from clipctl.data import registry
from clipctl.data.records import RemoteFile

CC3M = registry.REGISTRY["cc3m-100k"]
IMAGENET = registry.REGISTRY["imagenet-val"]


def _shard(first: int, colours: list[tuple[int, int, int]]) -> bytes:
    members = {}
    for k, colour in enumerate(colours, first):
        members[f"{k:09d}.jpg"], members[f"{k:09d}.txt"] = jpeg_bytes(colour), f"caption {k}".encode()
    return tar_bytes(members)


SHARDS = {
    "cc3m-train-0000.tar": _shard(0, [(200, 0, 0), (0, 200, 0)]),
    "cc3m-train-0001.tar": _shard(2, [(0, 0, 200), (90, 90, 90)]),
    "cc3m-train-0002.tar": _shard(4, [(9, 9, 9)]),
}


@pytest.fixture
def cc3m_hub(monkeypatch, tmp_path, data_root):
    hub_gen = serve_hub(monkeypatch, tmp_path, CC3M.hub_repo, CC3M.hub_revision)
    hub = next(hub_gen)
    hub.files.update(SHARDS)
    hub.lfs.update(SHARDS)
    monkeypatch.delenv("CLIPCTL_CC3M_ARCHIVE", raising=False)
    monkeypatch.delenv("CLIPCTL_CC3M_TSV", raising=False)
    monkeypatch.setitem(registry.REGISTRY, "cc3m-100k", dataclasses.replace(CC3M, expect={"pairs": 4}))
    yield hub
    next(hub_gen, None)


def _errors(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("clipctl: error")]


def test_cc3m_shards_come_through_huggingface_hub_and_its_cache(cc3m_hub, data_root, tmp_path, run_cli):
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    assert code == 0, err
    prefix = f"/datasets/{CC3M.hub_repo}/resolve/{CC3M.hub_revision}/"
    assert cc3m_hub.downloads() == [prefix + "cc3m-train-0000.tar", prefix + "cc3m-train-0001.tar"]  # not 0002
    manifest = json.loads((data_root / "manifests" / "cc3m-100k.json").read_text())
    assert manifest["counts"]["pairs"] == 4
    for name in ("cc3m-train-0000.tar", "cc3m-train-0001.tar"):
        assert manifest["downloads"][name]["sha256"] == hashlib.sha256(SHARDS[name]).hexdigest()
    cached = tmp_path / "hf-cache" / "datasets--pixparse--cc3m-wds" / "snapshots" / CC3M.hub_revision
    assert (cached / "cc3m-train-0000.tar").read_bytes() == SHARDS["cc3m-train-0000.tar"]
    assert not (data_root / "downloads" / "cc3m-wds").exists()  # the hub cache, not clipctl's own downloads
    cc3m_hub.log.clear()
    code, _, err = run_cli("data", "fetch", "cc3m-100k", "--force")
    assert code == 0, err
    assert cc3m_hub.downloads() == []  # pinned revision + cache: nothing asked of the hub again


@pytest.mark.parametrize("who", ["registry", "hub"])
def test_a_wrong_sha256_is_refused(cc3m_hub, data_root, tmp_path, run_cli, monkeypatch, who):
    name = "cc3m-train-0001.tar"
    if who == "registry":
        url = f"https://huggingface.co/datasets/x/resolve/{CC3M.hub_revision}/{name}"
        pinned = RemoteFile(name, url, sha256="ab" * 32)
        spec = registry.REGISTRY["cc3m-100k"]
        monkeypatch.setitem(registry.REGISTRY, "cc3m-100k", dataclasses.replace(spec, files=(pinned,)))
    else:
        cc3m_hub.claims[name] = "ab" * 32  # the hub's record says one thing, its bytes another
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    errors = _errors(err)
    assert code == 3 and len(errors) == 1 and "Traceback" not in err
    assert f"sha256 mismatch against the {who}" in errors[0] and "expected " + "ab" * 32 in errors[0]
    assert hashlib.sha256(SHARDS[name]).hexdigest() in errors[0]
    assert (data_root / "downloads" / "quarantine" / name).read_bytes() == SHARDS[name]
    assert not (data_root / "manifests" / "cc3m-100k.json").exists() and not (data_root / "cc3m-100k").exists()
    snapshot = tmp_path / "hf-cache" / "datasets--pixparse--cc3m-wds" / "snapshots" / CC3M.hub_revision
    assert not (snapshot / name).exists()  # the bad copy is not reused from the cache


def test_gated_hub_is_one_line_naming_the_token(cc3m_hub, run_cli):
    cc3m_hub.gated = True
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    errors = _errors(err)
    assert code == 3 and len(errors) == 1 and "gated" in errors[0] and "CLIPCTL_CC3M_ARCHIVE" in errors[0]


def test_offline_without_cache_is_one_line(cc3m_hub, run_cli, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    errors = _errors(err)
    assert code == 3 and len(errors) == 1 and "HF_HUB_OFFLINE is set" in errors[0]


def test_imagenet_hub_copy_through_snapshot_download(monkeypatch, tmp_path, data_root, run_cli):
    hub_gen = serve_hub(monkeypatch, tmp_path, IMAGENET.hub_repo, IMAGENET.hub_revision)
    hub = next(hub_gen)
    wnids = ["n01000001", "n02000002", "n03000003"]
    members = {f"ILSVRC2012_val_{i:08d}_{wnids[i % 3]}.JPEG": jpeg_bytes((i * 30, 0, 0)) for i in range(1, 7)}
    hub.files.update(
        {
            "classes.py": (
                b'IMAGENET2012_CLASSES = OrderedDict({"n01000001": "cat, true cat", '
                b'"n02000002": "dog", "n03000003": "bird"})\n'
            ),
            "data/val_images.tar.gz": tar_bytes(members, gz=True),
            "data/train_images_0.tar.gz": b"not wanted: allow_patterns keeps it out",
        }
    )
    hub.lfs.update({"data/val_images.tar.gz", "data/train_images_0.tar.gz"})
    monkeypatch.delenv("CLIPCTL_IMAGENET_DIR", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    monkeypatch.setitem(
        registry.REGISTRY, "imagenet-val", dataclasses.replace(IMAGENET, expect={"classes": 3, "images": 6})
    )
    code, _, err = run_cli("data", "fetch", "imagenet-val")
    assert code == 0, err
    prefix = f"/datasets/{IMAGENET.hub_repo}/resolve/{IMAGENET.hub_revision}/"
    assert sorted(hub.downloads()) == [prefix + "classes.py", prefix + "data/val_images.tar.gz"]
    assert {auth for _, _, auth in hub.log} == {"Bearer hf_test_token"}  # the hub client's own token handling
    assert sorted(p.name for p in (data_root / "imagenet-val").iterdir() if p.is_dir()) == wnids
    manifest = json.loads((data_root / "manifests" / "imagenet-val.json").read_text())
    tar_sha = hashlib.sha256(hub.files["data/val_images.tar.gz"]).hexdigest()
    assert manifest["downloads"]["val_images.tar.gz"]["sha256"] == tar_sha
    next(hub_gen, None)


FRESH_PROCESS = """
import dataclasses, sys
from pathlib import Path
from clipctl.data import registry
from clipctl.data.operations import fetch_dataset
spec = registry.REGISTRY["cc3m-100k"]
registry.REGISTRY["cc3m-100k"] = dataclasses.replace(spec, expect={"pairs": 4})
action, manifest = fetch_dataset("cc3m-100k", Path(sys.argv[1]))
print(action, manifest["counts"]["pairs"])
"""


@pytest.mark.slow
def test_hf_endpoint_from_the_environment_alone(tmp_path):
    """No patching of huggingface_hub: a fresh process with HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE=0 set."""
    hub, httpd = start_hub(CC3M.hub_repo, CC3M.hub_revision)
    hub.files.update(SHARDS)
    hub.lfs.update(SHARDS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPCTL_", "HF_"))}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0", NO_COLOR="1")
    try:
        result = subprocess.run(
            [sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "data")],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["fetched", "4"] and len(hub.downloads()) == 2
    assert (tmp_path / "hf" / "hub" / "datasets--pixparse--cc3m-wds").is_dir()


def closed_port() -> int:
    """A local port nothing listens on (connections are refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


OFFLINE_COPIES = {
    "cc3m-100k": ("CLIPCTL_CC3M_ARCHIVE=", "cc3m_train_subset.json", "CLIPCTL_CC3M_IMAGES=", "CLIPCTL_CC3M_TSV="),
    "imagenet-val": ("CLIPCTL_IMAGENET_DIR=", "val/<wnid>/*.JPEG", "ILSVRC2012_img_val.tar", "ILSVRC2012_devkit"),
}


@pytest.mark.parametrize("dataset", sorted(OFFLINE_COPIES))
@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE", "unreachable"])
def test_offline_fetch_is_one_line_naming_the_local_copies(dataset, network, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLIPCTL_", "HF_"))}
    env.update(HF_HOME=str(tmp_path / "hf"), CLIPCTL_DATA=str(tmp_path / "data"), NO_COLOR="1")
    if network == "HF_HUB_OFFLINE":
        env.update(HF_HUB_OFFLINE="1")
    else:  # online, but the endpoint refuses connections: no retries, no client warnings
        env.update(HF_HUB_OFFLINE="0", HF_ENDPOINT=f"http://127.0.0.1:{closed_port()}")
    proc = subprocess.run(
        [sys.executable, "-m", "clipctl", "data", "fetch", dataset], env=env, capture_output=True, text=True
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 3 and len(lines) == 2 and lines[0].startswith(f"{dataset}: licence: "), proc.stderr
    error = lines[1]
    assert error.startswith(f"clipctl: error: {dataset}: ") and "provide your own copy instead: " in error
    assert all(text in error for text in OFFLINE_COPIES[dataset])
    why = (
        "HF_HUB_OFFLINE is set"
        if network == "HF_HUB_OFFLINE"
        else f"the hub at {env.get('HF_ENDPOINT')} is unreachable"
    )
    assert why in error and "HF_ENDPOINT" in error
    assert proc.stdout == "" and not (tmp_path / "data" / "manifests").exists()


def test_an_unreachable_hub_still_serves_its_cache(cc3m_hub, run_cli, monkeypatch):
    from huggingface_hub import constants

    assert run_cli("data", "fetch", "cc3m-100k")[0] == 0
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{closed_port()}")
    cc3m_hub.log.clear()
    code, _, err = run_cli("data", "fetch", "cc3m-100k", "--force")
    assert code == 0 and "Retry" not in err, err
    assert cc3m_hub.log == []  # from the cache, without a request
