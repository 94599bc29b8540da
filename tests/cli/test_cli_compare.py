"""`clipctl compare`: formats on stdout, tables on stderr, --plot, exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys

import pytest
from helpers.rundirs import (
    COCO_IMAGENET,
    HOSTILE_SHOWN,
    SPOILED_SUMMARIES,
    make_hostile_run,
    make_run,
    spoil_summary,
)


def _runs(root):
    for seed in range(2):
        make_run(root, f"isog-s{seed}", seed=seed, tr1=0.30 + 0.02 * seed)
    make_run(root, "clip-s0", loss="clip", tr1=0.25)
    make_run(root, "coco", tr1=0.15, overrides=COCO_IMAGENET)
    make_run(root, "nosummary", status=None)
    (make_run(root, "corrupt") / "summary.json").write_text('{"status": ', encoding="utf-8")
    return root


def test_human_tables_on_stderr_list_uncounted_runs(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _runs(tmp_path / "runs")
    code, out, err = run_cli("compare")  # default: ./runs
    assert code == 0 and out == ""
    assert "isog" in err and "31.00 ± 1.41" in err and "[published]" in err and "CLIP (benchmark)" in err
    assert "runs/nosummary" in err and "incomplete" in err and "runs/corrupt" in err and "corrupt" in err
    assert "26.63" in err and "not meaningful" in err


def test_json_on_stdout(run_cli, tmp_path):
    code, out, err = run_cli("compare", _runs(tmp_path / "runs"), "--json")
    assert code == 0
    data = json.loads(out)
    groups = {g["label"]: g for g in data["groups"]}
    assert set(groups) == {"clip-s0", "coco", "isog"} and groups["isog"]["n"] == 2
    assert groups["coco"]["deltas_pct"]["clip"]["reference"] == "published"
    assert groups["coco"]["deltas_pct"]["clip"]["values"]["tr@1"] == 25.0
    assert groups["isog"]["deltas_pct"]["clip"]["reference"] == "measured"
    assert {r["status"] for r in data["not_counted"]} == {"incomplete", "corrupt"}
    assert "2 not counted" in err and "┃" not in err  # one summary line, no tables


def test_csv_and_markdown_and_metric_selection(run_cli, tmp_path):
    runs = _runs(tmp_path / "runs")
    code, out, _ = run_cli("compare", runs, "--csv", "--metric", "tr@5", "--metric", "acc@1", "--baseline", "clip")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 + 3 + 2
    assert "tr@5_mean_pct" in rows[0] and "tr@1_mean_pct" not in rows[0] and "delta_sogclr_reference" not in rows[0]
    code, out, _ = run_cli("compare", runs, "--markdown")
    assert code == 0
    body = [line for line in out.split("\n\n")[1].splitlines()[2:]]
    assert len(body) == 3 + 3 and out.startswith("### clipctl compare: 4 completed run(s) in 3 group(s)")


def test_plot_is_written(run_cli, tmp_path):
    png = tmp_path / "out" / "compare.png"
    code, _, err = run_cli("compare", _runs(tmp_path / "runs"), "--json", "--plot", png)
    assert code == 0 and f"wrote {png}" in err
    data = png.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000


def test_usage_errors_exit_2(run_cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_cli("compare")
    assert code == 2 and "no ./runs folder" in err and err.count("\n") == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("compare", "empty")
    assert code == 2 and "no run directories under empty" in err
    code, _, err = run_cli("compare", "missing")
    assert code == 2 and "missing: no such directory" in err
    runs = _runs(tmp_path / "runs")
    assert run_cli("compare", runs, "--json", "--csv")[0] == 2
    code, _, err = run_cli("compare", runs, "--metric", "tr1")
    assert code == 2 and "did you mean tr@1" in err
    assert run_cli("compare", runs, "--baseline", "nope")[0] == 2


def test_help_has_an_example(run_cli):
    code, out, _ = run_cli("compare", "--help")
    assert code == 0 and "Example: clipctl compare runs/" in out and "--baseline" in out and "--plot" in out


def test_no_traceback_from_the_console_script(tmp_path):
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CLIPCTL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "clipctl", "compare", str(tmp_path / "nothing")], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def _hostile_runs(root):
    """Two seeds of isog and a clip baseline beside a spoiled summary of every kind and a hostile folder name."""
    for seed in range(2):
        make_run(root, f"isog-s{seed}", seed=seed, tr1=0.30 + 0.02 * seed)
    make_run(root, "clip-s0", loss="clip", tr1=0.25)
    for how in SPOILED_SUMMARIES:
        spoil_summary(make_run(root, f"spoiled-{how}", seed=10), how)
    make_hostile_run(root, seed=11, status="failed")
    return root


def _lines_naming(text, name):
    return [line for line in text.splitlines() if name in line]


@pytest.mark.parametrize("output", ["tables", "--markdown", "--csv", "--json"])
def test_hostile_run_folders_get_one_line_each_and_the_other_runs_are_still_shown(run_cli, tmp_path, output):
    runs = _hostile_runs(tmp_path / "runs")
    code, out, err = run_cli("compare", runs, *([] if output == "tables" else [output]))
    assert code == 0 and "Traceback" not in out + err
    assert all(ch.isprintable() or ch == "\n" for ch in out + err)  # no ESC, bidi override or surrogate on either
    if output == "--json":
        data = json.loads(out)
        assert {g["label"]: g["n"] for g in data["groups"]} == {"clip-s0": 1, "isog": 2}
        reasons = {r["run"].rsplit("/", 1)[-1]: r["reason"] for r in data["not_counted"]}
        for how, reason in SPOILED_SUMMARIES.items():
            assert reason in reasons[f"spoiled-{how}"]
        assert reasons[HOSTILE_SHOWN] == "RuntimeError: loss is NaN at step 212 (lower optim.lr)"
        return
    text = out if output != "tables" else err
    for how, reason in SPOILED_SUMMARIES.items():
        [line] = _lines_naming(text, f"spoiled-{how}")  # one line, naming the run and why
        assert reason in line and "corrupt" in line
    [line] = _lines_naming(text, HOSTILE_SHOWN)
    assert "failed" in line and "loss is NaN" in line
    if output == "--csv":  # the others are still compared
        rows = {r["label"]: r for r in csv.DictReader(io.StringIO(out))}
        assert rows["isog"]["n"] == "2" and rows["isog"]["tr@1_mean_pct"] == "31" and rows["clip-s0"]["n"] == "1"
    else:
        assert "31.00 ± 1.41" in text and _lines_naming(text, "clip-s0")


@pytest.mark.slow
def test_the_console_script_prints_no_escape_and_no_traceback_for_hostile_runs(tmp_path):
    runs = _hostile_runs(tmp_path / "runs")
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("CLIPCTL_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "clipctl", "compare", str(runs), "--markdown", "--plot", str(tmp_path / "c.png")],
        capture_output=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
    assert b"\x1b" not in proc.stdout + proc.stderr and b"\n| " in proc.stdout
    out = proc.stdout.decode("utf-8")  # strict: a folder name that is not UTF-8 arrives escaped, not raw
    assert HOSTILE_SHOWN in out and out.count("spoiled-") == len(SPOILED_SUMMARIES)
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # bad math in a label: still drawn
