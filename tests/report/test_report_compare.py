"""clipctl.report: reading run directories, seed groups, baselines and deltas, output formats, the plot."""

from __future__ import annotations

import csv
import io
import json
import shutil
import statistics

import pytest
from helpers.rundirs import (
    COCO_IMAGENET,
    HOSTILE_NAME,
    HOSTILE_SHOWN,
    SPOILED_SUMMARIES,
    make_hostile_run,
    make_run,
    spoil_summary,
)

from clipctl.errors import UsageError
from clipctl.report import baselines as pub
from clipctl.report.compare import build_comparison, group_runs
from clipctl.report.render import to_csv, to_json, to_markdown
from clipctl.report.runs import load_run, scan_runs
from clipctl.report.text import plot_text, printable
from clipctl.run.reader import MAX_SEARCH_DEPTH, find_run_dirs, read_eval_lines

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _by_label(runs):
    return {r.path.name: r for r in runs}


def test_scan_classifies_every_kind_of_run_dir(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "done")
    make_run(root / "tune" / "phase1", "t001", seed=1)  # nested folders are searched
    make_run(root, "failed", status="failed")
    make_run(root, "stopped", status="interrupted")
    make_run(root, "live", status="running")
    make_run(root, "nosummary", status=None)
    (make_run(root, "badjson") / "summary.json").write_text('{"status": "compl', encoding="utf-8")
    (make_run(root, "notobject") / "summary.json").write_text("[1, 2]", encoding="utf-8")
    make_run(root, "weird", summary_extra={"status": "exploded"})
    make_run(root, "notest", summary_extra={"test": None})
    make_run(root, "badmetric", summary_extra={"test": {"tr@1": 3.5, "ir@1": 0.1, "acc@1": 0.1}})
    (make_run(root, "norecipe") / "recipe.toml").unlink()
    (make_run(root, "badrecipe") / "recipe.toml").write_text("[run\nseed = ", encoding="utf-8")
    (root / "done" / "eval").mkdir()
    (root / "done" / "eval" / "summary.json").write_text("{}", encoding="utf-8")  # inside a run: not a run
    (root / "notes").mkdir()  # a folder without runs is skipped

    runs = _by_label(scan_runs([root]))
    status = {name: run.status for name, run in runs.items()}
    assert status == {
        "done": "completed",
        "t001": "completed",
        "failed": "failed",
        "stopped": "interrupted",
        "live": "running",
        "nosummary": "incomplete",
        "badjson": "corrupt",
        "notobject": "corrupt",
        "weird": "corrupt",
        "notest": "corrupt",
        "badmetric": "corrupt",
        "norecipe": "corrupt",
        "badrecipe": "corrupt",
    }
    reason = {name: run.reason for name, run in runs.items()}
    assert "not valid JSON" in reason["badjson"] and "list" in reason["notobject"]
    assert "'exploded'" in reason["weird"] and "no test metrics" in reason["notest"]
    assert "test.tr@1 = 3.5" in reason["badmetric"] and "recipe.toml missing" in reason["norecipe"]
    assert "invalid TOML" in reason["badrecipe"] and "no summary.json" in reason["nosummary"]
    assert reason["failed"] == "RuntimeError: loss is NaN at step 212 (lower optim.lr)"  # one line
    assert "after 2 of 4 epochs" in reason["stopped"] and "--resume" in reason["stopped"]  # a count, not a number
    assert runs["t001"].seed == 1 and runs["done"].test_metric("average") == pytest.approx((0.3 + 0.2 + 0.5) / 3)


def test_scan_accepts_a_run_dir_or_its_files_and_rejects_missing_paths(tmp_path):
    run = make_run(tmp_path, "one")
    assert find_run_dirs([run]) == [run.resolve()]
    assert find_run_dirs([run / "summary.json", run]) == [run.resolve()]  # de-duplicated
    with pytest.raises(UsageError, match="no such directory"):
        find_run_dirs([tmp_path / "missing"])
    with pytest.raises(UsageError, match="not a run directory"):
        find_run_dirs([run / "metrics.jsonl"])


def test_metrics_jsonl_tolerates_a_torn_last_line(tmp_path):
    run_dir = make_run(tmp_path, "live", status="running")
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"type": "eval", "epoch": 2, "val/obj')
    run = load_run(run_dir)
    points = run.evals()
    assert [p.epoch for p in points] == [0, 1] and run.bad_metric_lines == 1
    assert "val/objective" in points[0].values


def test_groups_differ_only_by_seed_with_mean_and_sample_std(tmp_path):
    root = tmp_path / "runs"
    values = [(0.30, 0.20, 0.50), (0.34, 0.22, 0.52), (0.32, 0.27, 0.51)]
    for seed, (tr, ir, acc) in enumerate(values):
        make_run(root / f"machine{seed}", f"isog-s{seed}", seed=seed, tr1=tr, ir1=ir, acc1=acc)  # out_dir differs too
    make_run(root, "isog-lr", overrides=["optim.lr=5e-4"])  # another recipe: another group
    groups, excluded = group_runs(scan_runs([root]))
    assert not excluded and [g.label for g in groups] == ["isog", "isog-lr"]
    group = groups[0]
    assert group.seeds == [0, 1, 2] and len(group.runs) == 3
    tr = group.stat("tr@1")
    assert (
        tr.n == 3 and tr.mean == pytest.approx(0.32) and tr.std == pytest.approx(statistics.stdev([0.30, 0.34, 0.32]))
    )
    avg = group.stat("average")
    assert avg.mean == pytest.approx(statistics.fmean(sum(v) / 3 for v in values))
    single = groups[1].stat("tr@1")
    assert single.n == 1 and single.std is None


def test_uncounted_runs_are_listed_never_aggregated(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a-s0", tr1=0.30)
    # A failed run that still carries (bogus) test metrics must not move the mean.
    make_run(root, "a-s1", seed=1, status="failed", summary_extra={"test": {"tr@1": 0.99, "ir@1": 0.9, "acc@1": 0.9}})
    make_run(root, "a-s2", seed=2, status=None)
    (make_run(root, "a-s3", seed=3, tr1=0.9) / "summary.json").write_text("{", encoding="utf-8")
    c = build_comparison(scan_runs([root]))
    assert [g.label for g in c.groups] == ["a-s0"] and c.groups[0].stat("tr@1").mean == pytest.approx(0.30)
    assert {r.path.name: r.status for r in c.excluded} == {"a-s1": "failed", "a-s2": "incomplete", "a-s3": "corrupt"}
    assert c.groups[0].status == "1 completed, 1 failed, 1 incomplete, 1 corrupt"
    assert any("3 run directories not counted" in n for n in c.notes)


def test_measured_baselines_on_the_same_data_win_over_published(tmp_path):
    root = tmp_path / "runs"
    for seed in range(2):
        make_run(root, f"isog-s{seed}", seed=seed, tr1=0.30, ir1=0.20, acc1=0.50)
        make_run(root, f"clip-s{seed}", loss="clip", seed=seed, tr1=0.24, ir1=0.16, acc1=0.40)
    make_run(root, "sog", loss="sogclr", tr1=0.25, ir1=0.20, acc1=0.40, overrides=["optim.lr=5e-4"])
    c = build_comparison(scan_runs([root]))
    deltas = {d.baseline: d for d in c.deltas[next(g.key for g in c.groups if g.label == "isog")]}
    clip = deltas["clip"]
    assert clip.kind == "measured" and clip.reference == "clip"
    assert [r.rsplit("/", 1)[-1] for r in clip.runs] == ["clip-s0", "clip-s1"]  # which runs are stated
    assert clip.percent["tr@1"] == pytest.approx(25.0) and clip.percent["ir@1"] == pytest.approx(25.0)
    assert clip.percent["average"] == pytest.approx((1.0 / 3 - 0.8 / 3) / (0.8 / 3) * 100)
    sog = deltas["sogclr"]
    assert (
        sog.kind == "measured"
        and sog.percent["tr@1"] == pytest.approx(20.0)
        and sog.percent["ir@1"] == pytest.approx(0.0)
    )
    assert "optim.lr" in sog.note  # the measured baseline's other differences are stated
    clip_group = next(g for g in c.groups if g.label == "clip")
    assert {d.baseline: d.kind for d in c.deltas[clip_group.key]} == {"clip": "self", "sogclr": "measured"}


def test_measured_baseline_is_the_closest_recipe_on_the_same_sources(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "isog", overrides=["train.epochs=6"], epochs=6)
    make_run(root, "clip-far", loss="clip", tr1=0.10)
    make_run(root, "clip-near", loss="clip", tr1=0.20, overrides=["train.epochs=6"], epochs=6)
    make_run(root, "clip-coco", loss="clip", tr1=0.01, overrides=[*COCO_IMAGENET, "train.epochs=6"], epochs=6)
    c = build_comparison(scan_runs([root]), baselines=["clip"])
    isog = next(g for g in c.groups if g.label == "isog")
    delta = c.deltas[isog.key][0]
    assert delta.kind == "measured" and delta.reference == "clip-near" and delta.percent["tr@1"] == pytest.approx(50.0)


def test_published_deltas_only_where_the_test_data_match(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "coco", tr1=0.15, ir1=0.1165, acc1=0.2854, overrides=COCO_IMAGENET)
    make_run(root, "shapes")
    make_run(root, "coco-retrieval-only", tr1=0.15, overrides=[COCO_IMAGENET[0]])
    # CLIP measured on the course's COCO 5k val split: not the same test data as "coco", comparable with published.
    make_run(root, "coco-clip", loss="clip", tr1=0.06, overrides=["eval.test_retrieval=coco-val-5k", COCO_IMAGENET[1]])
    c = build_comparison(scan_runs([root]), metrics=["tr@1", "ir@1", "acc@1", "average", "tr@5"])
    deltas = {g.label: {d.baseline: d for d in c.deltas[g.key]} for g in c.groups}
    coco = deltas["coco"]["clip"]
    assert coco.kind == "published" and coco.reference == "CLIP (benchmark)"
    assert coco.percent["tr@1"] == pytest.approx(25.0)  # the report's "+25.0% TR@1 vs CLIP"
    assert coco.percent["acc@1"] == pytest.approx(33.7, abs=0.05)  # its "+33.7%" ACC@1
    assert coco.percent["tr@5"] is None  # no published TR@5
    assert "training setting differs" in coco.note and "data.train=shapes:train" in coco.note
    assert deltas["coco"]["sogclr"].percent["ir@1"] == pytest.approx((11.65 - 10.73) / 10.73 * 100)
    shapes = deltas["shapes"]["clip"]
    assert shapes.kind == "none" and all(v is None for v in shapes.percent.values())
    assert "not comparable" in shapes.note and "loss.name=clip" in shapes.note
    own = deltas["coco-clip"]["clip"]  # a measured CLIP reproduction is set against the published CLIP row
    assert (
        own.kind == "published"
        and own.percent["tr@1"] == pytest.approx(-50.0)
        and "this group is the measured clip" in own.note
    )
    partial = deltas["coco-retrieval-only"]["clip"].percent
    assert partial["tr@1"] == pytest.approx(25.0) and partial["acc@1"] is None and partial["average"] is None
    assert any("shapes:test / shapes:zeroshot" in n and "not meaningful" in n for n in c.notes)
    assert any("±0.5" in n or "+-0.5" in n for n in c.notes)  # published spread is stated when used


def test_a_baseline_without_measured_or_published_row_says_so(tmp_path):
    make_run(tmp_path, "x", overrides=COCO_IMAGENET)
    c = build_comparison(scan_runs([tmp_path]), baselines=["fastclip_v3"])
    delta = c.deltas[c.groups[0].key][0]
    assert delta.kind == "none" and "no published fastclip_v3 row" in delta.note
    with pytest.raises(UsageError, match="did you mean clip"):
        build_comparison([], baselines=["clipp"])
    with pytest.raises(UsageError, match="did you mean acc@1"):
        build_comparison([], metrics=["acc1"])


def test_published_rows_and_typo_footnote(tmp_path):
    rows = {row.key: row for row in pub.PUBLISHED}
    assert [(r.tr1, r.ir1, r.acc1) for r in rows.values()] == [
        (12.00, 9.32, 21.35),
        (14.38, 10.73, 24.54),
        (15.00, 11.52, 28.54),
    ]
    assert [round(r.metric("average"), 2) for r in rows.values()] == [14.22, 16.55, 18.35]
    note = rows["isogclr_new"].footnote
    assert "26.63" in note and "28.54" in note and "18.33" in note and "Table 2" in note
    make_run(tmp_path, "x")
    c = build_comparison(scan_runs([tmp_path]))
    md = to_markdown(c)
    assert "28.54†" in md and "26.63" in md and md.count("[published]") == 3
    data = to_json(c)
    published = {p["loss"]: p for p in data["published"]}
    assert published["clip"]["metrics"]["tr@1"] == pytest.approx(0.12) and published["clip"]["kind"] == "published"
    assert "26.63" in published["isogclr_new"]["footnote"]


def test_best_value_per_column_among_comparable_rows(tmp_path):
    root = tmp_path / "runs"
    make_run(root, "a", tr1=0.40, ir1=0.10)
    make_run(root, "b", loss="clip", tr1=0.30, ir1=0.20, samples_per_s=900.0)
    make_run(root, "coco", tr1=0.155, ir1=0.05, overrides=COCO_IMAGENET)
    c = build_comparison(scan_runs([root]))
    keys = {g.label: g.key for g in c.groups}
    assert (keys["a"], "tr@1") in c.best and (keys["b"], "ir@1") in c.best
    assert (keys["coco"], "tr@1") in c.best and ("published:isogclr_new", "tr@1") not in c.best  # 15.5 beats 15.00
    assert ("published:isogclr_new", "ir@1") in c.best and (keys["coco"], "ir@1") not in c.best
    assert (keys["b"], "samples_per_s") in c.best and (keys["a"], "samples_per_s") not in c.best
    assert "**40.00**" in to_markdown(c)


def _fabricate(root):
    for seed in range(3):
        make_run(root, f"isog-s{seed}", seed=seed, tr1=0.30 + 0.01 * seed)
    make_run(root, "clip-s0", loss="clip", tr1=0.25)
    make_run(root, "broken", status=None)
    (make_run(root, "corrupt") / "summary.json").write_text("not json", encoding="utf-8")


def test_json_csv_markdown_parse(tmp_path):
    _fabricate(tmp_path)
    c = build_comparison(scan_runs([tmp_path]))
    data = json.loads(json.dumps(to_json(c)))
    assert [g["label"] for g in data["groups"]] == ["clip-s0", "isog"]
    isog = data["groups"][1]
    assert (
        isog["n"] == 3
        and isog["metrics"]["tr@1"]["mean"] == pytest.approx(0.31)
        and isog["metrics"]["tr@1"]["std"] == pytest.approx(0.01)
    )
    assert isog["deltas_pct"]["clip"]["reference"] == "measured" and isog["deltas_pct"]["clip"]["values"][
        "tr@1"
    ] == pytest.approx(24.0)
    assert isog["deltas_pct"]["sogclr"]["reference"] == "none"
    assert {r["status"] for r in data["not_counted"]} == {"incomplete", "corrupt"}

    rows = list(csv.DictReader(io.StringIO(to_csv(c))))
    assert [r["kind"] for r in rows] == ["measured"] * 2 + ["published"] * 3 + ["not_counted"] * 2
    assert float(rows[1]["tr@1_mean_pct"]) == pytest.approx(31.0) and float(rows[1]["tr@1_std_pct"]) == pytest.approx(
        1.0
    )
    assert float(rows[1]["delta_clip_tr@1_pct"]) == pytest.approx(24.0) and rows[1]["delta_sogclr_tr@1_pct"] == ""
    assert rows[2]["acc@1_mean_pct"] == "21.35"
    assert {(r["label"].rsplit("/", 1)[-1], r["status"]) for r in rows[5:]} == {
        ("broken", "incomplete"),
        ("corrupt", "corrupt"),
    }

    md = to_markdown(c)
    table = []
    for line in md.splitlines():
        if line.startswith("|"):
            table.append(line)
        elif table:
            break
    header, rule, *body = table
    assert header.count("|") == rule.count("|") and len(body) == 2 + 3
    assert all(row.count("|") - row.count("\\|") == header.count("|") for row in body)
    assert "31.00 ± 1.00" in md and "#### Not counted" in md


def test_plot_writes_a_png(tmp_path):
    from clipctl.report.plots import write_plot

    _fabricate(tmp_path / "runs")
    make_run(tmp_path / "runs", "coco", overrides=COCO_IMAGENET)
    c = build_comparison(scan_runs([tmp_path / "runs"]))
    out = write_plot(c, tmp_path / "plots" / "compare.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 20_000
    assert not [p for p in out.parent.iterdir() if p.name != "compare.png"]  # no temp file left behind
    empty = build_comparison([load_run(make_run(tmp_path / "other", "nothing", status=None))])
    assert write_plot(empty, tmp_path / "empty.png").read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(UsageError, match="is a directory"):
        write_plot(c, tmp_path / "plots")


def test_recipes_outside_the_schema_still_group_without_crashing(tmp_path):
    for seed in range(2):  # a key from a newer clipctl: not in this schema, still the same recipe
        path = make_run(tmp_path, f"new-s{seed}", seed=seed) / "recipe.toml"
        path.write_text(path.read_text(encoding="utf-8") + "\n[future]\nkey = 1\n", encoding="utf-8")
    (make_run(tmp_path, "odd") / "recipe.toml").write_text('run = 5\neval = "x"\n', encoding="utf-8")
    c = build_comparison(scan_runs([tmp_path]))
    assert sorted((g.label, len(g.runs)) for g in c.groups) == [("new", 2), ("odd", 1)]
    odd = next(g for g in c.groups if g.label == "odd")
    assert odd.loss == "isogclr_new" and odd.runs[0].seed == 0  # from summary.json
    assert odd.retrieval_source == "shapes:test"


# ------------------------------------------------------------------------------ hostile run folders


@pytest.mark.parametrize("how", sorted(SPOILED_SUMMARIES))
def test_a_spoiled_summary_is_one_reason_and_the_other_runs_still_count(tmp_path, how):
    make_run(tmp_path, "good-s0")
    make_run(tmp_path, "good-s1", seed=1)
    spoil_summary(make_run(tmp_path, "bad", seed=2), how)
    c = build_comparison(scan_runs([tmp_path]))
    assert [(g.label, len(g.runs)) for g in c.groups] == [("good", 2)]
    [bad] = c.excluded
    assert bad.path.name == "bad" and bad.status == "corrupt" and SPOILED_SUMMARIES[how] in bad.reason
    assert c.groups[0].others == [bad]  # same recipe: listed beside its group, never averaged in


def test_run_files_past_the_readers_limits_are_named(tmp_path):
    (make_run(tmp_path, "deep-recipe") / "recipe.toml").write_text("a = " + "[" * 5000 + "]" * 5000)
    (make_run(tmp_path, "deep-40") / "summary.json").write_text('{"a": ' + "[" * 40 + "]" * 40 + "}")  # parses, refused
    (make_run(tmp_path, "long-number") / "summary.json").write_text('{"status": ' + "1" * 5000 + "}")
    make_run(tmp_path, "long-status", summary_extra={"status": "x" * 1_000_000})
    runs = _by_label(scan_runs([tmp_path]))
    reasons = {name: run.reason for name, run in runs.items()}
    assert {run.status for run in runs.values()} == {"corrupt"}
    assert "recipe.toml is nested more than 32 levels deep" in reasons["deep-recipe"]
    assert "summary.json is nested more than 32 levels deep" in reasons["deep-40"]
    assert "a number too long to read" in reasons["long-number"]
    assert "status = 'xxx" in reasons["long-status"] and len(reasons["long-status"]) < 200


def test_absurd_summary_numbers_are_left_out_not_averaged(tmp_path):
    make_run(tmp_path, "x-s0", wall_time_s=1e308, samples_per_s=1e308)
    make_run(tmp_path, "x-s1", seed=1, wall_time_s=1e308, samples_per_s=-1e308)
    c = build_comparison(scan_runs([tmp_path]))  # fmean/stdev of these would overflow
    data = json.loads(json.dumps(to_json(c), allow_nan=False))
    assert data["groups"][0]["wall_time_s"]["n"] == 0 and data["groups"][0]["samples_per_s"]["mean"] is None


def test_a_train_subset_without_a_source_still_gets_its_note(tmp_path):
    make_run(tmp_path, "coco", overrides=COCO_IMAGENET, summary_extra={"train_subset": {"keys_sha256": "ab" * 32}})
    c = build_comparison(scan_runs([tmp_path]))
    assert "different training subset (?, keys sha256 abababababab)" in c.deltas[c.groups[0].key][0].note


def test_metrics_lines_past_the_parser_are_bad_lines_and_a_huge_log_is_skipped(tmp_path):
    run = make_run(tmp_path, "r")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as handle:
        handle.write("[" * 100_000 + "]" * 100_000 + "\n" + '{"type": "eval", "epoch": ' + "1" * 5000 + "}\n")
    lines = read_eval_lines(run / "metrics.jsonl")
    assert len(lines.points) == 4 and lines.bad == 2 and lines.problem == ""
    with open(run / "metrics.jsonl", "wb") as handle:
        handle.truncate(65 << 20)
    lines = read_eval_lines(run / "metrics.jsonl")
    assert lines.points == [] and "65.0 MiB, over the 64.0 MiB limit" in lines.problem


def test_search_stops_at_the_depth_limit_with_one_warning(tmp_path, capsys):
    shallow = make_run(tmp_path / ("d/" * (MAX_SEARCH_DEPTH - 1)), "shallow")
    chain = [tmp_path / "a"]
    for _ in range(1100):  # os.walk recurses once per level: past ~1000 it used to die with RecursionError
        chain.append(chain[-1] / "a")
    try:
        for folder in chain:
            folder.mkdir()
        make_run(chain[-1], "too-deep")
        assert find_run_dirs([tmp_path]) == [shallow.resolve()]
    finally:  # pytest's own clean-up of tmp_path recurses too: leave no tree it cannot remove
        shutil.rmtree(chain[-1] / "too-deep", ignore_errors=True)
        for folder in reversed(chain):
            if folder.is_dir():
                folder.rmdir()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and f"not searched deeper than {MAX_SEARCH_DEPTH} folder levels" in err


def test_printable_escapes_what_would_move_the_cursor_or_break_a_line():
    assert printable(HOSTILE_NAME) == HOSTILE_SHOWN
    assert printable("tab\there\r\x9b\u2028\U000e0001") == "tab\\there\\r\\x9b\\u2028\\U000e0001"
    assert printable("isogclr_new-b128 ± ü 中") == "isogclr_new-b128 ± ü 中"  # printable text is left alone
    assert plot_text("run$x$") == "run\\$x\\$"


def test_every_format_escapes_folder_names_and_summary_text(tmp_path):
    make_hostile_run(tmp_path, status="failed", summary_extra={"error": "boom \x1b]0;owned\x07 \u202eevil"})
    make_hostile_run(tmp_path / "done")
    c = build_comparison(scan_runs([tmp_path]))
    outputs = {"markdown": to_markdown(c), "csv": to_csv(c), "json": json.dumps(to_json(c), ensure_ascii=False)}
    for name, text in outputs.items():
        assert all(ch.isprintable() or ch == "\n" for ch in text), name  # no ESC, bidi override or surrogate
        assert (json.dumps(HOSTILE_SHOWN)[1:-1] if name == "json" else HOSTILE_SHOWN) in text, name
    assert len(list(csv.DictReader(io.StringIO(outputs["csv"])))) == len(outputs["csv"].splitlines()) - 1
    assert "boom \\x1b]0;owned\\x07 \\u202eevil" in outputs["markdown"]
    assert json.loads(outputs["json"])["not_counted"][0]["run"].endswith(f"/{HOSTILE_SHOWN}")


# ------------------------------------------------------------------------------ measured baselines (issue 25)


def test_a_measured_baseline_names_its_other_differences_the_temperature_first(tmp_path):
    make_run(tmp_path, "quickstart", tr1=0.093)  # tau_init = 0.05
    make_run(tmp_path, "quickstart-clip", loss="clip", tr1=0.02, overrides=["data.augment=true"])  # clip's τ 0.01
    c = build_comparison(scan_runs([tmp_path]), baselines=["clip"])
    group = next(g for g in c.groups if g.label == "quickstart")
    delta = c.deltas[group.key][0]
    assert delta.kind == "measured" and delta.reference == "quickstart-clip"
    assert (
        "its recipe also differs in the starting temperature (loss.tau_init = 0.05 here, loss.temperature = 0.01 "
        "in quickstart-clip), data.augment;" in delta.note
    )
    assert "train this group's recipe with `loss.name=clip loss.temperature=0.05`" in delta.note
    assert "tau_min" not in delta.note and "learnable_temp" not in delta.note  # one loss's own keys: the method
    data = json.loads(json.dumps(to_json(c)))
    clip = next(g for g in data["groups"] if g["label"] == "quickstart")["deltas_pct"]["clip"]
    assert clip["recipe_differences"] == [
        {"key": "loss.tau_init", "value": 0.05, "baseline_key": "loss.temperature", "baseline_value": 0.01},
        {"key": "data.augment", "value": False, "baseline_key": "data.augment", "baseline_value": True},
    ]
    assert "starting temperature (loss.tau_init = 0.05 here" in to_markdown(c)


def test_a_baseline_that_differs_in_the_loss_only_is_preferred_and_says_nothing_more(tmp_path):
    make_run(tmp_path, "qs", tr1=0.30)
    make_run(tmp_path, "qs-clip-default", loss="clip", tr1=0.02)
    make_run(tmp_path, "qs-clip-warm", loss="clip", tr1=0.24, overrides=["loss.temperature=0.05"])
    make_run(tmp_path, "qs-sog", loss="sogclr", tr1=0.25, overrides=["loss.temperature=0.05", "loss.gamma=0.9"])
    c = build_comparison(scan_runs([tmp_path]))
    deltas = {d.baseline: d for d in c.deltas[next(g.key for g in c.groups if g.label == "qs")]}
    clip = deltas["clip"]
    assert clip.reference == "qs-clip-warm" and clip.differences == [] and clip.percent["tr@1"] == pytest.approx(25.0)
    assert clip.note == "measured clip baseline: qs-clip-warm (n=1, same test data)"
    sog = deltas["sogclr"]  # gamma is read by both losses: a setting, not the method
    assert [d.key for d in sog.differences] == ["loss.gamma"] and "`loss.name=sogclr loss.temperature=0.05`" in sog.note


def test_the_no_baseline_hint_keeps_the_groups_temperature(tmp_path):
    make_run(tmp_path, "qs", overrides=["loss.tau_init=0.03"])
    c = build_comparison(scan_runs([tmp_path]))
    notes = {d.baseline: d.note for d in c.deltas[c.groups[0].key]}
    assert "train the same recipe with `loss.name=clip loss.temperature=0.03`" in notes["clip"]
    assert "train the same recipe with `loss.name=sogclr loss.temperature=0.03`" in notes["sogclr"]


def _md_cell(text):
    return text.replace("|", "\\|")


def test_deltas_against_a_baseline_below_one_percent_are_points(tmp_path):
    make_run(tmp_path, "qs", tr1=0.093, ir1=0.0766, acc1=0.1488)
    make_run(tmp_path, "qs-clip", loss="clip", tr1=0.004, ir1=0.0, acc1=0.01, overrides=["loss.temperature=0.05"])
    c = build_comparison(scan_runs([tmp_path]), metrics=["tr@1", "ir@1", "acc@1"], baselines=["clip"])
    group = next(g for g in c.groups if g.label == "qs")
    delta = c.deltas[group.key][0]
    assert delta.in_points == ["tr@1", "ir@1"]  # ACC@1 at exactly 1% stays relative
    assert delta.percent["tr@1"] is None and delta.points["tr@1"] == pytest.approx(8.9)
    assert delta.percent["acc@1"] == pytest.approx(1388.0) and delta.points["acc@1"] == pytest.approx(13.88)
    assert "ΔTR@1, ΔIR@1 in percentage points (pp): the baseline is below 1% there (TR@1 0.40%, IR@1 0.00%)" in (
        delta.note
    )
    md = to_markdown(c)
    row = next(line for line in md.splitlines() if line.startswith("| qs | clip |"))
    assert row.endswith("| +8.90 pp | +7.66 pp | +1388.0% | " + _md_cell(delta.note) + " |")
    assert any("absolute difference value - baseline in percentage points (pp)" in n for n in c.notes)
    data = json.loads(json.dumps(to_json(c), allow_nan=False))
    clip = next(g for g in data["groups"] if g["label"] == "qs")["deltas_pct"]["clip"]
    assert clip["in_points"] == ["tr@1", "ir@1"] and clip["values"]["tr@1"] is None
    assert clip["points"]["tr@1"] == pytest.approx(8.9) and clip["values"]["acc@1"] == pytest.approx(1388.0)
    rows = {r["label"]: r for r in csv.DictReader(io.StringIO(to_csv(c)))}
    assert rows["qs"]["delta_clip_tr@1_pct"] == "" and float(rows["qs"]["delta_clip_tr@1_pp"]) == pytest.approx(8.9)
