"""clipctl.report: reading run directories, seed groups, baselines and deltas, output formats, the plot."""

from __future__ import annotations

import csv
import io
import json
import statistics

import pytest
from helpers.rundirs import COCO_IMAGENET, make_run

from clipctl.errors import UsageError
from clipctl.report import baselines as pub
from clipctl.report.compare import build_comparison, group_runs
from clipctl.report.render import to_csv, to_json, to_markdown
from clipctl.report.runs import load_run, scan_runs
from clipctl.run.reader import find_run_dirs

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
    assert "epoch 2/4" in reason["stopped"] and "--resume" in reason["stopped"]
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
