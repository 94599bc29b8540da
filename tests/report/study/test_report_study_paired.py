"""report/study/paired.py: groups whose recipe names differ in one factor (towers, loss, batch) are paired seed by
seed, with each difference's 95% interval, sign count and sign test in paired.{md,json}."""

from __future__ import annotations

import json
import math

import pytest
from helpers.paths import REPO_ROOT

from clipctl.errors import UsageError
from clipctl.report.study import paired
from clipctl.report.study.names import differing_factor, factors

T_2 = 4.302653  # t(0.975, 2 degrees of freedom)


def group(label: str, seeds: list[int], averages: list[float], kind: str = "measured") -> dict:
    metrics = {m: {"values": [a + (0.01 if m == "tr@1" else 0.0) for a in averages]} for m in paired.METRICS}
    return {"label": label, "kind": kind, "seeds": seeds, "metrics": metrics}


def write_compare(tmp_path, groups: list[dict]):
    (tmp_path / "compare.json").write_text(json.dumps({"groups": groups}))
    return tmp_path / "compare.json"


def test_pairs_differ_in_one_factor_and_are_taken_seed_by_seed(tmp_path):
    groups = [
        group("towers_sogclr_b32-lr-0.004", [2, 0, 1], [0.30, 0.20, 0.26]),  # seeds out of order: matched by seed
        group("towers_clip_b32", [0, 1, 2], [0.21, 0.24, 0.31]),
        group("towers_clip_b8", [0, 1], [0.10, 0.12]),
        group("othertowers_sogclr_b8", [0, 1], [0.5, 0.5]),  # differs from towers_clip_b8 in towers and loss
        group("SogCLR [published]", [None], [0.16], kind="published"),
    ]
    paired.write_paired(write_compare(tmp_path, groups))
    rows = {(r["first"], r["second"]): r for r in json.loads((tmp_path / "paired.json").read_text())["pairs"]}
    assert set(rows) == {("towers_clip_b8", "towers_clip_b32"), ("towers_clip_b32", "towers_sogclr_b32-lr-0.004")}
    assert rows["towers_clip_b8", "towers_clip_b32"]["factor"] == "batch"
    loss = rows["towers_clip_b32", "towers_sogclr_b32-lr-0.004"]  # the chosen lr is no factor
    assert loss["seeds"] == [0, 1, 2] and loss["factor"] == "loss"
    assert loss["average"]["deltas"] == pytest.approx([-1.0, 2.0, -1.0])
    assert loss["average"]["mean"] == pytest.approx(0.0) and loss["average"]["second_higher"] == 1
    batch = rows["towers_clip_b8", "towers_clip_b32"]  # natural order: b8 first; seed 2 only in one group
    assert batch["seeds"] == [0, 1] and batch["tr@1"]["deltas"] == pytest.approx([11.0, 12.0])
    table = (tmp_path / "paired.md").read_text()
    row = "| towers_clip_b32 | towers_sogclr_b32-lr-0.004 | loss | 0, 1, 2 | -1.00, +2.00, -1.00 | +0.00 ± 1.73 | 1/3 |"
    assert row in table


def test_every_pair_has_its_interval_sign_test_and_call_in_json_and_markdown(tmp_path):
    groups = [
        group("clip_b16", [0, 1, 2], [0.20, 0.20, 0.20]),
        group("sogclr_b16", [0, 1, 2], [0.21, 0.22, 0.23]),  # +1, +2, +3 points: mean 2, interval 2 ± 2.48
        group("sogclr_b128", [0, 1, 2], [0.1536, 0.1478, 0.1468]),  # against sogclr_b16: −5.64, −7.22, −8.32
    ]
    paired.write_paired(write_compare(tmp_path, groups))
    rows = {(r["first"], r["second"]): r for r in json.loads((tmp_path / "paired.json").read_text())["pairs"]}
    loss = rows["clip_b16", "sogclr_b16"]["average"]
    half = T_2 / math.sqrt(3)
    assert loss["ci95"] == pytest.approx([2.0 - half, 2.0 + half], abs=1e-6)
    assert loss["sign_test_p"] == pytest.approx(0.25) and loss["called"] is False
    batch = rows["sogclr_b16", "sogclr_b128"]["average"]
    assert batch["deltas"] == pytest.approx([-5.64, -7.22, -8.32]) and batch["called"] is True
    sd = math.sqrt((1.42**2 + 0.16**2 + 1.26**2) / 2)  # deviations from the mean −7.06
    assert batch["std"] == pytest.approx(sd)
    assert batch["ci95"] == pytest.approx([-7.06 - T_2 * sd / math.sqrt(3), -7.06 + T_2 * sd / math.sqrt(3)])
    assert rows["clip_b16", "sogclr_b16"]["tr@1"]["ci95"] is not None  # every metric has its own interval
    table = (tmp_path / "paired.md").read_text()
    assert "| 95% interval | sign-test p | called |" in table
    loss_row = "| clip_b16 | sogclr_b16 | loss | 0, 1, 2 | +1.00, +2.00, +3.00 | +2.00 ± 1.00 | 3/3 |"
    assert f"{loss_row} [-0.48, +4.48] | 0.25 | no |" in table
    batch_row = "| sogclr_b16 | sogclr_b128 | batch | 0, 1, 2 | -5.64, -7.22, -8.32 | -7.06 ± 1.35 | 0/3 |"
    assert f"{batch_row} [-10.41, -3.71] | 0.25 | yes |" in table


def test_a_metric_a_group_cannot_give_per_seed_is_left_out_not_misaligned(tmp_path):
    clip = group("clip_b16", [0, 1, 2], [0.20, 0.21, 0.22])
    sogclr = group("sogclr_b16", [0, 1, 2], [0.25, 0.25, 0.25])
    sogclr["metrics"]["acc@1"]["values"] = [0.3, 0.3]  # one run without ACC@1: values no longer match seeds
    del sogclr["metrics"]["ir@1"]  # compared without IR@1
    paired.write_paired(write_compare(tmp_path, [clip, sogclr]))
    (row,) = json.loads((tmp_path / "paired.json").read_text())["pairs"]
    assert row["acc@1"] is None and row["ir@1"] is None and row["average"]["mean"] == pytest.approx(4.0)
    assert "| +4.00 ± 1.00 | 3/3 |" in (tmp_path / "paired.md").read_text()
    assert (tmp_path / "paired.md").read_text().rstrip().splitlines()[4].endswith("| — | — |")


def test_hostile_labels_cannot_break_the_markdown_table(tmp_path):
    groups = [group("clip_b16", [0, 1], [0.2, 0.2]), group("evil|x\nrow_b16", [0, 1], [0.3, 0.3])]
    paired.write_paired(write_compare(tmp_path, groups))
    table = (tmp_path / "paired.md").read_text()
    assert (
        "evil\\|x\\nrow_b16" in table and len([line for line in table.splitlines() if line.startswith("| clip")]) == 1
    )


def test_out_folder_leaves_the_input_folder_alone(tmp_path):
    source = write_compare(tmp_path, [group("clip_b16", [0, 1], [0.2, 0.3]), group("clip_b32", [0, 1], [0.3, 0.3])])
    md = paired.write_paired(source, tmp_path / "elsewhere" / "new")
    assert md == tmp_path / "elsewhere" / "new" / "paired.md" and (md.parent / "paired.json").is_file()
    assert not (tmp_path / "paired.md").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (None, "no such file"),
        ("{not json", "not JSON"),
        ('{"runs": []}', "no list of groups"),
        ('{"groups": [{"kind": "measured"}]}', "no list of groups"),
        ("[1, 2]", "no list of groups"),
    ],
)
def test_a_missing_or_foreign_input_is_refused_and_nothing_written(tmp_path, content, says):
    source = tmp_path / "compare.json"
    if content is not None:
        source.write_text(content)
    with pytest.raises(UsageError, match=says) as err:
        paired.write_paired(source)
    assert "clipctl compare RUNS --json" in str(err.value) and str(source) in str(err.value)
    assert not (tmp_path / "paired.md").exists() and not (tmp_path / "paired.json").exists()


def test_a_pair_differs_in_exactly_one_factor():
    assert differing_factor("cliptowers_clip_b8", "cliptowers_sogclr_b8") == "loss"
    assert differing_factor("cliptowers_clip_b8", "sogclrtowers_clip_b8") == "towers"
    assert differing_factor("cliptowers_clip_b8", "sogclrtowers_sogclr_b8") is None
    assert differing_factor("clip_b16", "sogclr_g1_b16") == "loss"  # a loss's settings are part of it
    assert differing_factor("isogclr_new_b32", "isogclr_new_v2_b32") == "loss"
    assert differing_factor("isogclr_new_b32", "isogclr_new_v2_b256") is None
    assert differing_factor("sogclr_g08_b16", "sogclr_g08_b128-lr-0.004") == "batch"
    assert differing_factor("clip_b16", "clip_b16") is None
    assert factors("quickstart") == {"towers": "", "loss": "quickstart", "batch": ""}


NEW_KEYS = ("ci95", "sign_test_p", "called")


def _without_the_interval_columns(table: str) -> str:
    """paired.md as it was before the 95% interval, sign-test p and called columns (and their footnote)."""
    lines = []
    for line in table.splitlines():
        if line.startswith("|"):
            cells = line[1:-1].split("|")
            line = "|" + "|".join(cells[:7] + cells[10:]) + "|"
        if not line.startswith("- 95% interval"):
            lines.append(line)
    return "\n".join(lines) + "\n"


def _without_the_interval_keys(pairs: list[dict]) -> None:
    for row in pairs:
        for metric in paired.METRICS:
            popped = [row[metric].pop(key) for key in NEW_KEYS]
            assert None not in popped[1:]  # every pair has its sign test and call


def test_the_committed_paired_tables_come_again_from_their_compare_json(tmp_path):
    """Every committed study's paired.{md,json} is what this module writes from its compare.json, apart from the
    interval columns and keys where it was written before them (and the input's path in the heading, which says
    where it was read: study 2 A's names the machine it was made on)."""
    found = sorted((REPO_ROOT / "bench" / "results").glob("study*/**/paired.json"))
    assert len(found) >= 4
    for committed in found:
        md = paired.write_paired(committed.with_name("compare.json"), tmp_path / committed.parent.name)
        table, old_table = md.read_text(), committed.with_suffix(".md").read_text()
        new, old = json.loads(md.with_suffix(".json").read_text()), json.loads(committed.read_text())
        if "| 95% interval |" not in old_table:  # written before the intervals: compare the rest
            table = _without_the_interval_columns(table)
            _without_the_interval_keys(new["pairs"])
        assert new["pairs"] == old["pairs"], committed
        heading, rest = table.split("\n", 1)
        old_heading, old_rest = old_table.split("\n", 1)
        assert rest == old_rest and heading.split(" (")[0] == old_heading.split(" (")[0], committed
