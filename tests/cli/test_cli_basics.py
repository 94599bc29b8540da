"""The CLI shell: help, version, recipes commands, doctor, error rendering and exit codes."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from clipctl import __version__


def test_help_and_version(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0 and "recipes" in out and "doctor" in out
    code, out, _ = run_cli("--version")
    assert code == 0 and __version__ in out


def test_recipes_ls_lists_builtins_with_descriptions(run_cli):
    code, out, _ = run_cli("recipes", "ls", "--json")
    assert code == 0
    rows = {r["name"]: r["description"] for r in json.loads(out)}
    assert "isogclr_radam" in rows and "Table 3" in rows["isogclr_radam"]
    assert all(rows.values())


def test_recipes_ls_in_a_pipe_is_grep_able_plain_rows_on_stdout():
    env = {**os.environ, "NO_COLOR": "1"}
    ls = subprocess.Popen(
        [sys.executable, "-m", "clipctl", "recipes", "ls"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    grep = subprocess.run(["grep", "sogclr"], stdin=ls.stdout, capture_output=True, text=True)
    ls.stdout.close()
    err = ls.stderr.read().decode()
    assert ls.wait() == 0 and grep.returncode == 0, err
    names = [line.split("\t")[0] for line in grep.stdout.splitlines()]
    assert "sogclr_adamw" in names and "clip_adamw" in names  # its description names sogclr
    assert not any(n.startswith("study") for n in names)  # study cells are hidden by default
    assert not set("│┃━─┏") & set(grep.stdout)  # no box drawing in a pipe
    assert "study recipes (recipes/study*/) not listed" in err and "--all" in err  # the note goes to stderr


def test_recipes_ls_all_lists_study_recipes_and_a_terminal_gets_a_table(run_cli, monkeypatch):
    code, out, err = run_cli("recipes", "ls", "--all")
    rows = [line.split("\t") for line in out.splitlines()]
    assert code == 0 and rows[0] == ["name", "description"] and err == ""
    names = [r[0] for r in rows[1:]]
    assert "study/sogclr_b32" in names and "study3/base" in names and "tune/phase1" in names
    code, out, _ = run_cli("recipes", "ls", "--json")
    assert code == 0 and not any(r["name"].startswith("study") for r in json.loads(out))
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = run_cli("recipes", "ls")
    assert code == 0 and "built-in recipes" in out and "│ sogclr_adamw" in out


def test_recipes_validate_all_builtins(run_cli):
    import glob

    files = sorted(glob.glob("recipes/*.toml") + glob.glob("recipes/tune/*.toml"))
    code, _, err = run_cli("recipes", "validate", *files)
    assert code == 0 and err.count("ok ") == len(files)


def test_recipes_show_resolved(run_cli):
    code, out, _ = run_cli("recipes", "show", "isogclr_radam", "--resolved", "train.epochs=7")
    assert code == 0
    from clipctl.recipe import tomllib

    data = tomllib.loads(out)
    assert data["train"]["epochs"] == 7 and data["optim"]["lr"] == 1.64e-4 and data["sched"]["name"] == "tanh"


def test_recipes_cp_refuses_to_overwrite(run_cli, tmp_path):
    dest = tmp_path / "mine.toml"
    assert run_cli("recipes", "cp", "isogclr_radam", dest)[0] == 0
    copied = dest.read_text()
    assert "extends" not in copied and "radam" in copied
    code, _, err = run_cli("recipes", "cp", "quickstart", dest)
    assert code == 2 and "already exists" in err and dest.read_text() == copied


def test_invalid_recipe_is_one_line_exit_2_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlrr = 1\n")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CLIPCTL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "clipctl", "recipes", "validate", str(bad)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "did you mean optim.lr?" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "clipctl", "recipes", "validate", str(bad)],
        capture_output=True,
        text=True,
        env={**env, "CLIPCTL_DEBUG": "1"},
    )
    assert proc.returncode == 2 and "Traceback" in proc.stderr


def test_unknown_command_is_usage_error(run_cli):
    code, _, err = run_cli("recipes", "nope")
    assert code == 2 and "nope" in err


def test_doctor_reports_versions_devices_paths(run_cli, data_root):
    code, out, _ = run_cli("doctor", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["versions"]["clipctl"] == __version__ and report["versions"]["torch"] != "missing"
    assert report["devices"]["default_device"] in {"cpu", "cuda", "mps"}
    assert report["paths"]["data_root"] == str(data_root.resolve())
    code, _, err = run_cli("doctor")
    assert code == 0 and "versions" in err and "paths" in err


def test_an_echoed_value_with_control_characters_stays_one_escaped_line(run_cli, tmp_path, capsys):
    """A file name is whatever someone wrote: an ANSI escape in it must not recolour the terminal."""
    from clipctl.console import info, warn

    code, _, err = run_cli("eval", str(tmp_path / "x\x1b[31mred.pt"), "--shapes")
    assert code == 2 and "\x1b" not in err and "\\x1b[31mred.pt" in err and err.count("\n") == 1
    info("note on \x1b[2Jscreen\nsplit")
    warn("bidi \u202eevil")
    printed = capsys.readouterr().err
    assert "\\x1b[2Jscreen\\nsplit" in printed and "\\u202eevil" in printed and "\x1b" not in printed


def fake_hub_cache(cache: Path, repo: str, files: list[str]) -> None:
    """A hub cache entry as huggingface_hub writes it: refs/main names a snapshot holding the files."""
    commit = "a" * 40
    entry = cache / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(commit)
    for name in files:
        (entry / "snapshots" / commit).mkdir(parents=True, exist_ok=True)
        (entry / "snapshots" / commit / name).write_text("{}")


@pytest.fixture
def local_endpoint():
    """An HTTP server on 127.0.0.1 that answers every request 404, as a hub answers an unknown path."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.slow  # a fresh interpreter: huggingface_hub reads HF_HUB_CACHE and HF_ENDPOINT at import
def test_doctor_reports_the_hub_and_which_pretrained_files_are_cached(tmp_path, local_endpoint):
    cache = tmp_path / "hub-cache"
    fake_hub_cache(cache, "distilbert-base-uncased", ["tokenizer.json", "config.json"])  # tokenizer, no weights
    fake_hub_cache(cache, "timm/resnet50.a1_in1k", ["model.safetensors"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=local_endpoint, HF_HUB_OFFLINE="0", NO_COLOR="1")
    command = [sys.executable, "-m", "clipctl", "doctor", "--json"]
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["hub"] == {"endpoint": local_endpoint, "reachable": True, "problem": None}
    cached = {(p["repo"], p["what"]): p["cached"] for p in report["pretrained"]}
    assert cached == {
        ("distilbert-base-uncased", "text weights"): False,
        ("distilbert-base-uncased", "tokenizer"): True,
        ("timm/resnet50.a1_in1k", "image weights"): True,
    }
    users = {p["repo"]: p["recipes"] for p in report["pretrained"]}
    assert "sogclr_adamw" in users["distilbert-base-uncased"] and "quickstart" not in users["distilbert-base-uncased"]


def test_doctor_says_why_the_hub_cannot_be_used(run_cli, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    monkeypatch.setattr(constants, "ENDPOINT", closed)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    code, out, _ = run_cli("doctor", "--json")
    hub = json.loads(out)["hub"]
    assert code == 0 and hub["reachable"] is False and hub["problem"].startswith(f"the hub at {closed} is unreachable")
    code, _, err = run_cli("doctor")
    assert code == 0 and f"hub {closed}: the hub at {closed} is unreachable" in err and "cached" in err
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, _ = run_cli("doctor", "--json")
    assert json.loads(out)["hub"] == {"endpoint": closed, "reachable": False, "problem": "HF_HUB_OFFLINE is set"}
