"""Hostile archives, built here: `..`, absolute paths, links out, hard links, chained links and the
PATH_MAX symlink chain of CVE-2025-4517. Each is refused with one line and exit 3, and nothing outside the
target (nor anything already present) changes, through `extract` and through `clipctl data fetch cc3m-100k`."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest

from clipctl.data.archive import extract
from clipctl.errors import DataError


def _file(name: str, data: bytes = b"pwned") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info, None


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def _tar(path: Path, members: list) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in [_file("fine/ok.txt", b"ok"), *members]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _path_max_chain(outside_levels: int) -> list:
    """CVE-2025-4517: every link lexically inside the target, but long enough names that realpath() gives up
    (PATH_MAX), so a link `escape` built on the chain points out of the folder, and a file is written through it."""
    comp = "d" * 247
    steps = "abcdefghijklmnop"
    members, path = [], ""
    for step in steps:
        members.append(_dir(os.path.join(path, comp)))
        members.append(_link(os.path.join(path, step), comp))
        path = os.path.join(path, step)
    long_link = os.path.join("/".join(steps), "l" * 254)
    members.append(_link(long_link, "../" * len(steps)))
    members.append(_link("escape", long_link + "/.." * outside_levels))
    members.append(_file("escape/outside/victim.txt"))
    return members


CASES = {
    "dotdot": ([_file("../outside/victim.txt")], "'..' in path"),
    "nested-dotdot": ([_file("fine/../../outside/victim.txt")], "'..' in path"),
    "absolute": (["ABSOLUTE"], "absolute path"),
    "symlink-out": ([_link("fine/out", "../../outside"), _file("fine/out/victim.txt")], "outside the target"),
    "symlink-absolute": ([_link("fine/etc", "/etc/passwd")], "outside the target"),
    "write-through-inner-link": ([_link("fine/here", "."), _file("fine/here/x.txt")], "goes through the link"),
    "hardlink-out": ([_link("fine/hard", "../outside/victim.txt", tarfile.LNKTYPE)], "outside the target"),
    "hardlink-to-missing": ([_link("fine/hard", "fine/nothing.txt", tarfile.LNKTYPE)], "not a regular file"),
    "hardlink-to-link": ([_link("fine/s", "ok.txt"), _link("fine/h", "fine/s", tarfile.LNKTYPE)], "links to links"),
    # each link alone is lexically inside; followed in order, fine/l3 lands one level above the target
    "chained-links": (
        [
            _dir("fine/sub"),
            _link("l1", "fine"),
            _link("l2", "l1/.."),
            _link("fine/l3", "../l2/.."),
            _file("fine/l3/outside/victim.txt"),
        ],
        "links to links",
    ),
    "link-twice": ([_link("fine/t", "ok.txt"), _link("fine/t", "../../outside")], "appears more than once"),
    "path-max-chain": (_path_max_chain(outside_levels=2), "goes through the link"),
}


def _snapshot(folder: Path) -> dict[str, object]:
    """Everything under `folder` (files with content, links with target), to prove nothing changed; the data
    root's `.locks/` (empty lock files a fetch takes) is not data."""
    state: dict[str, object] = {}
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != ".locks"]
        for name in dirs + files:
            path = Path(base) / name
            rel = path.relative_to(folder).as_posix()
            state[rel] = os.readlink(path) if path.is_symlink() else (path.read_bytes() if path.is_file() else "dir")
    return state


@pytest.fixture
def scene(tmp_path):
    """tmp_path/outside/victim.txt (what an escape would overwrite) and tmp_path/work (the extraction parent)."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim.txt").write_bytes(b"original")
    (tmp_path / "work").mkdir()
    return tmp_path


def _build(scene: Path, case: str) -> Path:
    members, _ = CASES[case]
    if members == ["ABSOLUTE"]:
        members = [_file(str(scene / "outside" / "victim.txt"))]
    return _tar(scene / f"{case}.tar", members)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_tar_is_refused_and_nothing_changes(scene, case):
    archive = _build(scene, case)
    before = _snapshot(scene)
    with pytest.raises(DataError) as err:
        extract(archive, scene / "work" / "out")
    message = str(err.value)
    assert err.value.exit_code == 3 and "\n" not in message and CASES[case][1] in message
    assert "nothing was extracted" in message
    assert _snapshot(scene) == before  # no target, no temp folder, the victim untouched


@pytest.mark.parametrize(
    "case", ["path-max-chain", "chained-links", "symlink-out", "hardlink-out", "dotdot", "absolute"]
)
def test_hostile_cc3m_archive_via_cli(scene, case, data_root, run_cli, monkeypatch):
    archive = _build(scene, case)
    (data_root / "downloads").mkdir()
    (data_root / "downloads" / "keep.bin").write_bytes(b"already here")
    monkeypatch.setenv("CLIPCTL_CC3M_ARCHIVE", str(archive))
    before = _snapshot(scene)
    code, _, err = run_cli("data", "fetch", "cc3m-100k")
    errors = [line for line in err.splitlines() if line.startswith("clipctl: error")]
    assert code == 3 and len(errors) == 1 and "refused" in errors[0] and "Traceback" not in err
    assert _snapshot(scene) == before
    assert not (data_root / "cc3m-100k").exists() and not (data_root / "manifests" / "cc3m-100k.json").exists()


def test_links_inside_the_archive_still_extract(tmp_path):
    archive = _tar(
        tmp_path / "good.tar",
        [
            _dir("fine/sub"),
            _link("fine/alias.txt", "ok.txt"),
            _link("fine/sub/up", "../ok.txt"),
            _link("copy.txt", "fine/ok.txt", tarfile.LNKTYPE),
        ],
    )
    names = extract(archive, tmp_path / "out")
    out = tmp_path / "out"
    assert names == ["fine/ok.txt"]
    assert (out / "fine" / "alias.txt").is_symlink() and (out / "fine" / "alias.txt").read_bytes() == b"ok"
    assert (out / "fine" / "sub" / "up").read_bytes() == b"ok"
    assert (out / "copy.txt").read_bytes() == b"ok" and not (out / "copy.txt").is_symlink()


def test_the_path_max_chain_escapes_tarfile_data_filter_where_it_is_bypassable(tmp_path):
    """Why clipctl does not rely on `extractall(filter="data")`: show the archive above is really hostile."""
    fixed = sys.version_info >= (3, 12, 11) or (3, 11, 13) <= sys.version_info < (3, 12)
    if not hasattr(tarfile, "data_filter") or fixed:
        pytest.skip("tarfile's data filter holds on this Python")
    (tmp_path / "outside").mkdir()
    (tmp_path / "work" / "out").mkdir(parents=True)
    archive = _tar(tmp_path / "chain.tar", _path_max_chain(outside_levels=2))
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(tmp_path / "work" / "out", filter="data")
        except (tarfile.TarError, OSError):
            pytest.skip("this Python's tarfile refused the chain")
    assert (tmp_path / "outside" / "victim.txt").exists()  # written outside the extraction folder
