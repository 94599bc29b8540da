"""Shard sources (folder, nested folders, brace pattern, file://, pipe:, fsspec URL, `::` lists) and their count
table (img2dataset stats, `clipctl data index`, resumable, read-only shards, stale entries)."""

from __future__ import annotations

import json
import os

import fsspec
import pytest
from helpers import data_server
from helpers.output import assert_one_error_line
from helpers.shards import write_shards

from clipctl.data import shardindex
from clipctl.data.shardindex import INDEX_NAME, build_index, count_table
from clipctl.data.shards import expand_source, is_shard_source
from clipctl.errors import DataError


@pytest.fixture
def shards(tmp_path):
    folder = tmp_path / "shards"
    write_shards(folder, [3, 4, 2])
    return folder


def test_every_form_names_the_same_shards(shards):
    """A folder, a brace pattern, file:// URLs and a `::` list expand to the same shards with the same names."""
    expected = ("00000.tar", "00001.tar", "00002.tar")
    forms = [
        str(shards),
        f"{shards}/{{00000..00002}}.tar",
        "::".join(f"file://{shards}/{n}" for n in expected),
        f"{shards}/00000.tar::{shards}/{{00001..00002}}.tar",
    ]
    for form in forms:
        listed = expand_source(form)
        assert listed.names == expected, form
        assert listed.all_local


def test_nested_folders_and_gz_shards_are_one_dataset(tmp_path):
    write_shards(tmp_path / "d" / "run1", [2, 2])
    write_shards(tmp_path / "d" / "run2", [3], gz=True)
    listed = expand_source(str(tmp_path / "d"))
    assert listed.names == ("run1/00000.tar", "run1/00001.tar", "run2/00000.tar.gz")
    assert is_shard_source(str(tmp_path / "d"))


def test_which_reader_takes_a_source(tmp_path, shards):
    """A flat folder of .tar stays with the map-style reader; everything else is a shard source."""
    assert not is_shard_source(str(shards))
    assert is_shard_source(str(shards / "00000.tar"))
    assert is_shard_source(f"pipe:cat {shards}/00000.tar")
    assert is_shard_source("http://127.0.0.1:1/{0..3}.tar")
    assert is_shard_source("memory://bucket/a.tar")
    (tmp_path / "pairs.json").write_text("[]")
    assert not is_shard_source(str(tmp_path / "pairs.json"))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("{dir}/{{00000..00007}}.tar", "00003.tar (in "),
        ("{dir}/nothing-here", "no such shard file"),
        ("foo://bucket/x.tar", "unknown URL scheme 'foo'"),
        ("{dir}/00000_stats.json", "not a WebDataset shard"),
    ],
)
def test_bad_sources_are_one_line(shards, source, expected):
    (shards / "00000_stats.json").write_text("{}")
    with pytest.raises(DataError) as err:
        expand_source(source.format(dir=shards))
    assert expected in str(err.value) and "\n" not in str(err.value)
    assert err.value.exit_code == 3


def test_a_missing_backend_names_the_extra(monkeypatch):
    def no_backend(scheme):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "get_filesystem_class", no_backend)
    with pytest.raises(
        DataError, match=r"s3://bucket/a.tar: reading s3:// needs its fsspec backend; pip install 'clipctl\[s3\]'"
    ):
        expand_source("s3://bucket/a.tar")


def test_counts_from_img2dataset_stats_read_no_shard(tmp_path, monkeypatch):
    folder = tmp_path / "shards"
    write_shards(folder, [3, 4], stats=True)
    monkeypatch.setattr(shardindex, "count_shard", lambda *a, **k: pytest.fail("a shard was read"))
    table = count_table(expand_source(str(folder)), tmp_path / "root")
    assert table.counts == (3, 4) and table.offsets == (0, 3) and table.total == 7
    assert table.locate(0) == (0, 0) and table.locate(3) == (1, 0) and table.locate(6) == (1, 3)


def test_no_counts_names_the_index_command(shards, tmp_path):
    with pytest.raises(
        DataError, match=r"no sample counts for 3 of 3 shards \(first: 00000.tar\); run `clipctl data index"
    ):
        count_table(expand_source(str(shards)), tmp_path / "root")


def test_index_is_written_beside_the_shards_and_gives_the_counts(shards, tmp_path):
    path, table = build_index(expand_source(str(shards)), tmp_path / "root")
    assert path == shards / INDEX_NAME
    assert table.counts == (3, 4, 2)
    again = count_table(expand_source(f"{shards}/{{00000..00002}}.tar"), tmp_path / "root")
    assert again.counts == (3, 4, 2) and again.digest == table.digest


def test_index_of_read_only_shards_goes_to_the_data_root(shards, tmp_path, monkeypatch):
    real = shardindex.atomic_write_json

    def read_only_beside(path, payload):
        if path.parent == shards:
            raise PermissionError(13, "Permission denied", str(path))
        real(path, payload)

    monkeypatch.setattr(shardindex, "atomic_write_json", read_only_beside)  # as root, chmod would not stop a write
    path, _ = build_index(expand_source(str(shards)), tmp_path / "root")
    assert path.parent == tmp_path / "root" / "shard-index" and not (shards / INDEX_NAME).exists()
    assert count_table(expand_source(str(shards)), tmp_path / "root").counts == (3, 4, 2)


def test_index_resumes_and_recounts_only_changed_shards(shards, tmp_path, monkeypatch):
    build_index(expand_source(str(shards)), tmp_path / "root")
    write_shards(tmp_path / "other", [5])
    (tmp_path / "other" / "00000.tar").replace(shards / "00001.tar")  # regenerated: other size and mtime
    read = []
    real = shardindex.count_shard
    monkeypatch.setattr(shardindex, "count_shard", lambda url, policy: read.append(url) or real(url, policy))
    _, table = build_index(expand_source(str(shards)), tmp_path / "root")
    assert [os.path.basename(u) for u in read] == ["00001.tar"]
    assert table.counts == (3, 5, 2)


def test_an_unreadable_shard_keeps_what_was_counted(shards, tmp_path):
    (shards / "00002.tar").write_bytes(b"not a tar file" * 100)
    with pytest.raises(DataError, match=r"00002.tar: cannot read this shard to count it"):
        build_index(expand_source(str(shards)), tmp_path / "root", workers=1)
    entries = json.loads((shards / INDEX_NAME).read_text())["shards"]
    assert {name: e["count"] for name, e in entries.items()} == {"00000.tar": 3, "00001.tar": 4}


def test_pipe_and_fsspec_sources_count_like_files(shards, tmp_path):
    with open(shards / "00001.tar", "rb") as handle, fsspec.open("memory://bucket/00001.tar", "wb") as sink:
        sink.write(handle.read())
    _, piped = build_index(expand_source(f"pipe:cat {shards}/00001.tar"), tmp_path / "root")
    _, remote = build_index(expand_source("memory://bucket/00001.tar"), tmp_path / "root")
    assert piped.counts == remote.counts == (4,)
    assert piped.digest == remote.digest


def test_cli_data_index(run_cli, shards, tmp_path):
    code, out, err = run_cli("data", "index", f"{shards}/{{00000..00002}}.tar", "--data-root", tmp_path / "root")
    assert code == 0, err
    assert "9 samples in 3 shards" in out + err and (shards / INDEX_NAME).is_file()
    code, out, err = run_cli("data", "index", f"{shards}/{{00000..00009}}.tar")
    assert code == 3
    assert_one_error_line(err)
    assert "00003.tar" in err


def test_an_index_uploaded_beside_remote_shards_serves_every_node(shards, tmp_path, monkeypatch):
    """Indexed once, copied beside the shards in the bucket: a node with an empty data root reads no shard."""
    build_index(expand_source(str(shards)), tmp_path / "root")
    for path in shards.iterdir():
        with fsspec.open(f"memory://bucket/{path.name}", "wb") as sink:
            sink.write(path.read_bytes())
    monkeypatch.setattr(shardindex, "count_shard", lambda *a, **k: pytest.fail("a shard was read"))
    table = count_table(expand_source("memory://bucket/{00000..00002}.tar"), tmp_path / "other-node")
    assert table.counts == (3, 4, 2)


def test_a_recipe_list_of_sources_is_one_dataset(shards):
    from clipctl.recipe import load_recipe

    recipe = load_recipe("quickstart", [f'data.train=["{shards}/00000.tar", "{shards}/{{00001..00002}}.tar"]'])
    assert recipe.data.train == f"{shards}/00000.tar::{shards}/{{00001..00002}}.tar"
    assert expand_source(recipe.data.train).names == ("00000.tar", "00001.tar", "00002.tar")


def served(shards) -> tuple[data_server.FileServer, object]:
    server = data_server.FileServer(files={f"/{p.name}": p.read_bytes() for p in shards.iterdir() if p.is_file()})
    httpd, _ = data_server.start(server)
    return server, httpd


def test_data_index_records_remote_shard_sizes(shards, tmp_path):
    server, httpd = served(shards)
    try:
        index, _ = build_index(expand_source(f"{server.url}/{{00000..00002}}.tar"), tmp_path / "root")
    finally:
        httpd.shutdown()
        httpd.server_close()
    entries = json.loads(index.read_text())["shards"]
    assert {name: e["size"] for name, e in entries.items()} == {p.name: p.stat().st_size for p in shards.iterdir()}
    for path in shards.iterdir():
        with fsspec.open(f"memory://sized/{path.name}", "wb") as sink:
            sink.write(path.read_bytes())
    index, _ = build_index(expand_source("memory://sized/{00000..00002}.tar"), tmp_path / "root")
    assert json.loads(index.read_text())["shards"]["00001.tar"]["size"] == (shards / "00001.tar").stat().st_size


def upload(shards, server: data_server.FileServer, tmp_path) -> None:
    """Index the local copies, then put the index beside the served shards (as the README says for N nodes)."""
    build_index(expand_source(str(shards)), tmp_path / "root")
    server.files[f"/{INDEX_NAME}"] = (shards / INDEX_NAME).read_bytes()


def test_an_uploaded_index_whose_shard_changed_size_is_refused(shards, tmp_path, monkeypatch):
    server, httpd = served(shards)
    source = f"{server.url}/{{00000..00002}}.tar"
    try:
        upload(shards, server, tmp_path)
        monkeypatch.setattr(shardindex, "count_shard", lambda *a, **k: pytest.fail("a shard was read"))
        assert count_table(expand_source(source), tmp_path / "node").counts == (3, 4, 2)
        assert sorted(server.heads) == ["/00000.tar", "/00001.tar", "/00002.tar"]  # checked, not read
        server.files["/00001.tar"] = (shards / "00000.tar").read_bytes() + b"\0" * 1024  # replaced since
        monkeypatch.undo()
        with pytest.raises(DataError) as err:
            count_table(expand_source(source), tmp_path / "node")
    finally:
        httpd.shutdown()
        httpd.server_close()
    message = str(err.value)
    size = len(server.files["/00001.tar"])
    assert err.value.exit_code == 3 and "\n" not in message
    assert message.startswith(f"{server.url}/00001.tar: {size} bytes, its shard index says")
    assert f"run `clipctl data index '{source}'` again" in message


def test_data_index_recounts_a_remote_shard_that_changed_size(shards, tmp_path):
    for path in shards.iterdir():
        with fsspec.open(f"memory://moved/{path.name}", "wb") as sink:
            sink.write(path.read_bytes())
    source = expand_source("memory://moved/{00000..00002}.tar")
    build_index(source, tmp_path / "root")
    with fsspec.open("memory://moved/00002.tar", "wb") as sink:  # the shard of 2 replaced by one of 4
        sink.write((shards / "00001.tar").read_bytes())
    with pytest.raises(DataError, match=r"memory://moved/00002.tar: \d+ bytes, its shard index says \d+"):
        count_table(source, tmp_path / "root")
    _, table = build_index(source, tmp_path / "root")
    assert table.counts == (3, 4, 4) and count_table(source, tmp_path / "root").counts == (3, 4, 4)
