"""Aggregate runs into seed groups and set them against the CLIP/SogCLR baselines (measured or published).

Runs are grouped when their resolved recipes are equal once run.seed, run.name and run.out_dir are
removed (and they were tested on the same data). Only completed runs count; the rest are listed with
their status. Deltas are relative changes in percent, as in the report's abstract ("+25.0% TR@1 vs
CLIP"); they use a measured baseline group on the same test data when one exists, else the published
row, and only where the published numbers were measured on the same kind of data. Against a baseline
below 1% (chance level on most test sets) a relative change measures the baseline more than the run, so
the absolute difference in percentage points is shown instead. A measured baseline whose recipe differs
from the group's in more than the loss says where, the starting temperature first: changing only
`loss.name` drops the group's τ for the baseline loss's default.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clipctl.data.records import split_ref
from clipctl.errors import UsageError, shorten
from clipctl.losses.registry import loss_configs, loss_names
from clipctl.report import baselines as pub
from clipctl.report.runs import Run
from clipctl.run.layout import RunStatus
from clipctl.run.reader import finite_number

METRIC_TITLES = {
    "tr@1": "TR@1",
    "tr@5": "TR@5",
    "tr@10": "TR@10",
    "ir@1": "IR@1",
    "ir@5": "IR@5",
    "ir@10": "IR@10",
    "r_mean": "R_mean",
    "acc@1": "ACC@1",
    "acc@5": "ACC@5",
    "average": "average",
}
DEFAULT_METRICS = ("tr@1", "ir@1", "acc@1", "average")
DEFAULT_BASELINES = ("clip", "sogclr")
SEED_KEYS = (("run", "seed"), ("run", "name"), ("run", "out_dir"))
# The published training setting; a group that differs is told so next to its published deltas.
_PUBLISHED_SETTING = (
    ("data.train", "cc3m-100k"),
    ("model.image_model", "resnet50"),
    ("model.text_model", "distilbert-base-uncased"),
    ("train.epochs", 30),
    ("train.batch_size", 128),
)
# Where a loss section keeps the τ it starts from: the iSogCLR family reads tau_init, the others temperature.
TEMPERATURE_KEYS = ("tau_init", "temperature")
# A baseline value (percent) below which deltas are absolute differences in points, not relative changes.
NEAR_ZERO_PCT = 1.0


@dataclass
class Stat:
    """Mean and sample standard deviation (n - 1) of the values present; std is None below two values."""

    values: list[float]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) >= 2 else None


@dataclass
class Group:
    """Completed runs of one recipe (seeds aside) tested on the same data, plus its uncounted siblings."""

    key: str
    recipe_key: str
    recipe: dict[str, Any]
    retrieval_source: str
    zeroshot_source: str
    runs: list[Run]
    label: str = ""
    others: list[Run] = field(default_factory=list)

    @property
    def loss(self) -> str:
        return self.runs[0].loss or "?"

    @property
    def optimizer(self) -> str:
        return self.runs[0].optimizer or "?"

    @property
    def seeds(self) -> list[int | None]:
        return [run.seed for run in self.runs]

    def stat(self, metric: str) -> Stat:
        return Stat([v for v in (run.test_metric(metric) for run in self.runs) if v is not None])

    def summary_stat(self, key: str) -> Stat:
        return Stat([v for v in (run.summary_number(key) for run in self.runs) if v is not None])

    @property
    def epochs(self) -> list[int]:
        return sorted({int(v) for v in self.summary_stat("epochs_completed").values})

    @property
    def status(self) -> str:
        counts: dict[str, int] = {RunStatus.COMPLETED.value: len(self.runs)}
        for run in self.others:
            counts[run.status] = counts.get(run.status, 0) + 1
        return ", ".join(f"{n} {status}" for status, n in counts.items())


@dataclass(frozen=True)
class Difference:
    """A recipe key where a group and its measured baseline differ. For the starting temperature the two
    losses may name it differently (`loss.tau_init` here, `loss.temperature` there)."""

    key: str
    value: Any
    baseline_key: str
    baseline_value: Any


@dataclass
class Delta:
    """One group against one baseline: `kind` is measured, published, self (it is the baseline and no
    comparable published row exists) or none (nothing comparable). `percent` holds relative changes,
    `points` absolute differences in percentage points; `in_points` lists the metrics whose baseline is
    below NEAR_ZERO_PCT, shown in points only (their `percent` is None)."""

    baseline: str
    kind: str
    reference: str
    runs: list[str]
    percent: dict[str, float | None]
    note: str
    points: dict[str, float | None] = field(default_factory=dict)
    in_points: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)


@dataclass
class Comparison:
    metrics: list[str]
    baselines: list[str]
    groups: list[Group]
    published: tuple[pub.PublishedRow, ...]
    deltas: dict[str, list[Delta]]
    excluded: list[Run]
    best: set[tuple[str, str]]
    notes: list[str]

    @property
    def counted_runs(self) -> int:
        return sum(len(g.runs) for g in self.groups)


def check_metrics(names: Sequence[str] | None) -> list[str]:
    """The --metric values, validated; default TR@1, IR@1, ACC@1 and their average."""
    chosen = [n.strip().lower() for n in (names or DEFAULT_METRICS)]
    for name in chosen:
        if name not in METRIC_TITLES:
            hint = difflib.get_close_matches(name, METRIC_TITLES, n=1)
            extra = f"did you mean {hint[0]}? " if hint else ""
            raise UsageError(f"--metric {name}: unknown metric; {extra}choose from {', '.join(METRIC_TITLES)}")
    return list(dict.fromkeys(chosen))


def check_baselines(names: Sequence[str] | None) -> list[str]:
    """The --baseline values: loss names (a measured group with that loss, or its published row)."""
    chosen = [n.strip().lower() for n in (names or DEFAULT_BASELINES)]
    for name in chosen:
        if name not in loss_names():
            hint = difflib.get_close_matches(name, loss_names(), n=1)
            extra = f"did you mean {hint[0]}? " if hint else ""
            raise UsageError(f"--baseline {name}: not a loss name; {extra}choose from {', '.join(loss_names())}")
    return list(dict.fromkeys(chosen))


def strip_seed(recipe: dict[str, Any]) -> dict[str, Any]:
    """The recipe with the keys that only name or seed a run removed."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in recipe.items()}
    for section, key in SEED_KEYS:
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


def _digest(*parts: Any) -> str:
    """A stable group id (64 bits of sha256 over canonical JSON)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def flatten(recipe: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"optim": {"lr": 1}}` -> `{"optim.lr": 1}`; tables below a section (text_config) stay whole values."""
    flat: dict[str, Any] = {}
    for key, value in recipe.items():
        if isinstance(value, dict) and value and not prefix:
            flat.update(flatten(value, f"{key}."))
        else:
            flat[prefix + key] = value
    return flat


def group_runs(runs: Iterable[Run]) -> tuple[list[Group], list[Run]]:
    """Seed groups of the completed runs, and every run that does not count (sorted by label)."""
    groups: dict[str, Group] = {}
    excluded: list[Run] = []
    for run in runs:
        if not run.counted or run.recipe is None:
            excluded.append(run)
            continue
        recipe = strip_seed(run.recipe)
        recipe_key = _digest(recipe)
        key = _digest(recipe, run.retrieval_source, run.zeroshot_source)
        group = groups.setdefault(key, Group(key, recipe_key, recipe, run.retrieval_source, run.zeroshot_source, []))
        group.runs.append(run)
    ordered = list(groups.values())
    by_recipe = {g.recipe_key: g for g in ordered}
    for run in excluded:
        if run.recipe is not None:
            sibling = by_recipe.get(_digest(strip_seed(run.recipe)))
            if sibling is not None:
                sibling.others.append(run)
    _assign_labels(ordered)
    ordered.sort(key=lambda g: g.label)
    return ordered, sorted(excluded, key=lambda r: r.label)


def _assign_labels(groups: list[Group]) -> None:
    """A group is named after its runs: the common prefix of their folder names, minus a seed suffix."""
    for group in groups:
        group.runs.sort(key=lambda r: (r.seed if r.seed is not None else -1, r.label))
        names = [os.path.basename(r.label) or r.label for r in group.runs]
        if len(names) == 1:
            group.label = names[0]
            continue
        prefix = re.sub(r"[-_.](seed|s)?$", "", os.path.commonprefix(names)).rstrip("-_. ")
        group.label = prefix or f"{names[0]}+{len(names) - 1}"
    seen: dict[str, int] = {}
    for group in groups:
        seen[group.label] = seen.get(group.label, 0) + 1
    for group in groups:
        if seen[group.label] > 1:
            group.label = f"{group.label} [{group.key[:6]}]"


def _compare_values(
    values: dict[str, float | None], references: dict[str, float | None]
) -> tuple[dict[str, float | None], dict[str, float | None], list[str]]:
    """Per metric (percent in, percent out): the relative change, the difference in points, and the metrics
    whose reference is below NEAR_ZERO_PCT, where only the points are kept (+2225% over a 0.4% baseline
    near chance says more about the baseline than about the run)."""
    percent: dict[str, float | None] = {}
    points: dict[str, float | None] = {}
    in_points = []
    for metric, value in values.items():
        reference = references.get(metric)
        if value is None or reference is None:
            percent[metric] = points[metric] = None
            continue
        points[metric] = value - reference
        if reference < NEAR_ZERO_PCT:
            in_points.append(metric)
            percent[metric] = None
        else:
            percent[metric] = (value - reference) / reference * 100.0
    return percent, points, in_points


def _points_note(in_points: list[str], references: dict[str, float | None]) -> str:
    """Why some deltas of a row are in points; empty when none are."""
    if not in_points:
        return ""
    shown = ", ".join(f"{METRIC_TITLES[m]} {references[m]:.2f}%" for m in in_points)
    return (
        f"; {', '.join('Δ' + METRIC_TITLES[m] for m in in_points)} in percentage points (pp): the baseline is "
        f"below {NEAR_ZERO_PCT:g}% there ({shown}), where a relative change would mostly measure the baseline"
    )


def _group_means(group: Group, metrics: list[str]) -> dict[str, float | None]:
    """The group's means in percent."""
    return {m: None if (mean := group.stat(m).mean) is None else 100.0 * mean for m in metrics}


def start_temperature(recipe: dict[str, Any]) -> tuple[str, float] | None:
    """(`loss.KEY`, τ) a recipe starts from, whichever key its loss reads it from; None when it has none."""
    loss = recipe.get("loss")
    if not isinstance(loss, dict):
        return None
    for key in TEMPERATURE_KEYS:
        value = finite_number(loss.get(key))
        if value is not None:
            return f"loss.{key}", value
    return None


def recipe_differences(recipe: dict[str, Any], baseline: dict[str, Any]) -> list[Difference]:
    """Where a group's recipe and its measured baseline's differ beyond `loss.name`: the starting temperature
    first, then every other key. A loss key only one of the two losses reads is the method itself, not a
    difference of setting (clip has no tau_min to match)."""
    ours, theirs = flatten(recipe), flatten(baseline)
    found = []
    tau, base_tau = start_temperature(recipe), start_temperature(baseline)
    if tau is not None and base_tau is not None and tau[1] != base_tau[1]:
        found.append(Difference(tau[0], tau[1], base_tau[0], base_tau[1]))
    skipped = {"loss.name", *(f"loss.{key}" for key in TEMPERATURE_KEYS)}
    for key in sorted(set(ours) | set(theirs)):
        one_sided_loss_key = key.startswith("loss.") and not (key in ours and key in theirs)
        if key not in skipped and not one_sided_loss_key and ours.get(key) != theirs.get(key):
            found.append(Difference(key, ours.get(key), key, theirs.get(key)))
    return found


def _describe_differences(differences: list[Difference], reference: str, limit: int = 4) -> str:
    """`the starting temperature (loss.tau_init = 0.05 here, loss.temperature = 0.01 in REF), data.augment`."""
    parts = []
    for d in differences:
        if d.key.removeprefix("loss.") in TEMPERATURE_KEYS:
            parts.append(
                f"the starting temperature ({d.key} = {d.value!r} here, {d.baseline_key} = {d.baseline_value!r} "
                f"in {reference})"
            )
        else:
            parts.append(d.key)
    more = len(parts) - limit
    return ", ".join(parts[:limit]) + (f" and {more} more" if more > 0 else "")


def loss_only_overrides(group: Group, baseline: str) -> str:
    """The overrides that turn the group's recipe into its `baseline` twin, keeping its starting temperature
    (`loss.name` alone would give the baseline loss's default τ)."""
    config = loss_configs().get(baseline)
    key = next((k for k in TEMPERATURE_KEYS if config is not None and k in config.model_fields), None)
    tau = start_temperature(group.recipe)
    keep = f" loss.{key}={tau[1]!r}" if key is not None and tau is not None else ""
    return f"loss.name={baseline}{keep}"


def _measured_delta(group: Group, baseline: str, candidates: list[Group], metrics: list[str]) -> Delta:
    if group in candidates:
        # Its own baseline: the published row of the same method, when comparable, is the useful reference.
        published = _published_delta(group, baseline, metrics)
        if published.kind == "published":
            return published
        return Delta(
            baseline,
            "self",
            group.label,
            [r.label for r in group.runs],
            {m: None for m in metrics},
            f"this group is the measured {baseline} baseline",
        )
    ref = min(candidates, key=lambda g: (len(recipe_differences(group.recipe, g.recipe)), -len(g.runs), g.label))
    references = _group_means(ref, metrics)
    percent, points, in_points = _compare_values(_group_means(group, metrics), references)
    differences = recipe_differences(group.recipe, ref.recipe)
    note = f"measured {baseline} baseline: {ref.label} (n={len(ref.runs)}, same test data)"
    if differences:
        note += (
            f"; its recipe also differs in {_describe_differences(differences, ref.label)}; for a baseline that "
            f"differs in the loss only, train this group's recipe with `{loss_only_overrides(group, baseline)}`"
        )
    note += _points_note(in_points, references)
    return Delta(
        baseline, "measured", ref.label, [r.label for r in ref.runs], percent, note, points, in_points, differences
    )


def _published_delta(group: Group, baseline: str, metrics: list[str]) -> Delta:
    row = pub.published_row(baseline)
    sources = f"{group.retrieval_source} / {group.zeroshot_source}"
    if row is None:
        return Delta(
            baseline,
            "none",
            "",
            [],
            {m: None for m in metrics},
            f"no measured {baseline} run on {sources} and no published {baseline} row",
        )
    usable = [
        m
        for m in metrics
        if row.metric(m) is not None and pub.comparable(m, group.retrieval_source, group.zeroshot_source)
    ]
    if not usable:
        return Delta(
            baseline,
            "none",
            row.label,
            [],
            {m: None for m in metrics},
            f"no measured {baseline} run on {sources}; the published row is {pub.RETRIEVAL_LABEL} / "
            f"{pub.ZEROSHOT_LABEL} and not comparable, so no delta (train the same recipe with "
            f"`{loss_only_overrides(group, baseline)}`)",
        )
    references = {m: row.metric(m) if m in usable else None for m in metrics}
    percent, points, in_points = _compare_values(_group_means(group, metrics), references)
    own = group.loss == baseline
    note = f"published {row.label} ({row.citation}); " + (
        f"this group is the measured {baseline} run on {sources}" if own else f"no measured {baseline} run on {sources}"
    )
    note += _published_setting_note(group, usable) + _points_note(in_points, references)
    return Delta(baseline, "published", row.label, [], percent, note, points, in_points)


def _published_setting_note(group: Group, usable: list[str]) -> str:
    """How the group's training and test setting differs from the report's, for a published delta's note."""
    flat = flatten(group.recipe)
    subset = _train_subset(group)
    course = bool(subset and subset.get("course"))
    mismatched = [
        f"{k}={flat.get(k)}"
        for k, v in _PUBLISHED_SETTING
        if split_ref(str(flat.get(k, "")))[0] != str(v) and not (k == "data.train" and course)
    ]
    note = ""
    if mismatched:
        note += f"; training setting differs from the report's ({', '.join(mismatched)})"
    if (subset is not None or pub.is_published_train(str(flat.get("data.train", "")))) and not course:
        source = shorten(str(subset.get("source", "?"))) if subset else ""
        what = f"{source}, keys sha256 {subset['keys_sha256'][:12]}" if subset else "unrecorded"
        note += (
            f"; different training subset ({what}): the published rows trained on the course's cc3m_train_subset.json"
        )
    if any(m.startswith("acc@") or m == "average" for m in usable) and ":" in group.zeroshot_source:
        note += f"; ACC@1 on {group.zeroshot_source}, the published rows on all 50k ImageNet val images"
    return note


def _train_subset(group: Group) -> dict[str, Any] | None:
    """The training subset identity the group's first run recorded (summary.json `train_subset`)."""
    subset = (group.runs[0].summary or {}).get("train_subset")
    return subset if isinstance(subset, dict) and isinstance(subset.get("keys_sha256"), str) else None


def compute_deltas(groups: list[Group], metrics: list[str], baselines: list[str]) -> dict[str, list[Delta]]:
    """Per group, one Delta per baseline: measured on the same test data if possible, else published."""
    out: dict[str, list[Delta]] = {}
    for group in groups:
        rows = []
        for baseline in baselines:
            candidates = [
                g
                for g in groups
                if g.loss == baseline
                and g.retrieval_source == group.retrieval_source
                and g.zeroshot_source == group.zeroshot_source
            ]
            rows.append(
                _measured_delta(group, baseline, candidates, metrics)
                if candidates
                else _published_delta(group, baseline, metrics)
            )
        out[group.key] = rows
    return out


def _pool(metric: str, retrieval: str, zeroshot: str) -> tuple[str, ...]:
    """Rows are ranked only against rows tested on the same data; COCO 5k / ImageNet join the published rows."""
    r = "published-retrieval" if pub.is_coco_5k(retrieval) else retrieval
    z = "published-zeroshot" if pub.is_imagenet(zeroshot) else zeroshot
    if metric == "average":
        return (r, z)
    return (z,) if metric.startswith("acc@") else (r,)


def best_cells(groups: list[Group], published: Sequence[pub.PublishedRow], metrics: list[str]) -> set[tuple[str, str]]:
    """(row id, column) of the best value per column among comparable rows (ties all bold)."""
    best: set[tuple[str, str]] = set()
    for metric in metrics:
        pools: dict[tuple[str, ...], list[tuple[str, float]]] = {}
        for g in groups:
            mean = g.stat(metric).mean
            if mean is not None:
                pools.setdefault(_pool(metric, g.retrieval_source, g.zeroshot_source), []).append((g.key, 100.0 * mean))
        for row in published:
            value = row.metric(metric)
            if value is not None:
                pools.setdefault(_pool(metric, *pub.published_sources()), []).append((f"published:{row.key}", value))
        for entries in pools.values():
            best |= _top(entries, metric)
    speeds = [(g.key, g.summary_stat("samples_per_s").mean) for g in groups]
    return best | _top([(k, v) for k, v in speeds if v is not None], "samples_per_s")


def _top(entries: list[tuple[str, float]], column: str) -> set[tuple[str, str]]:
    """The highest entries (ties included), or nothing when there is no one to beat."""
    top = max((v for _, v in entries), default=None)
    winners = {rid for rid, v in entries if top is not None and math.isclose(v, top, rel_tol=1e-9, abs_tol=1e-9)}
    return {(rid, column) for rid in winners} if len(winners) < len(entries) else set()


def _notes(groups: list[Group], deltas: dict[str, list[Delta]], excluded: list[Run]) -> list[str]:
    in_points = any(d.in_points for rows in deltas.values() for d in rows)
    notes = [
        "values: mean ± sample std over seeds, in percent; n = runs counted; TR@1 = image->text retrieval, "
        "IR@1 = text->image, ACC@1 = zero-shot top-1, average = (TR@1 + IR@1 + ACC@1) / 3",
        "deltas: relative change in percent, (value - baseline) / baseline, of the group means"
        + (
            f"; against a baseline below {NEAR_ZERO_PCT:g}%, the absolute difference "
            "value - baseline in percentage points (pp)"
            if in_points
            else ""
        ),
        "bold: best value per column among rows tested on the same data",
        pub.SETTING,
        "† " + pub.ACC_TYPO_FOOTNOTE,
    ]
    not_comparable = sorted(
        {
            f"{g.retrieval_source} / {g.zeroshot_source}"
            for g in groups
            if not (pub.is_coco_5k(g.retrieval_source) or pub.is_imagenet(g.zeroshot_source))
        }
    )
    if not_comparable:
        notes.append(
            f"runs tested on {'; '.join(not_comparable)}: the published rows are shown for reference only; "
            "deltas against them are not meaningful there, so only measured baselines on the same data are used"
        )
    if any(d.kind == "published" for rows in deltas.values() for d in rows):
        notes.append(pub.SPREAD_NOTE)
    if any(len(g.runs) == 1 for g in groups):
        notes.append("n = 1: no std; add seeds with `clipctl train RECIPE run.seed=K --name NAME-sK`")
    if excluded:
        notes.append(
            f"{len(excluded)} run director{'y' if len(excluded) == 1 else 'ies'} not counted (listed with "
            "status and reason)"
        )
    return notes


def build_comparison(
    runs: Iterable[Run], metrics: Sequence[str] | None = None, baselines: Sequence[str] | None = None
) -> Comparison:
    """Everything `clipctl compare` shows, independent of the output format."""
    chosen_metrics = check_metrics(metrics)
    chosen_baselines = check_baselines(baselines)
    groups, excluded = group_runs(runs)
    deltas = compute_deltas(groups, chosen_metrics, chosen_baselines)
    return Comparison(
        metrics=chosen_metrics,
        baselines=chosen_baselines,
        groups=groups,
        published=pub.PUBLISHED,
        deltas=deltas,
        excluded=excluded,
        best=best_cells(groups, pub.PUBLISHED, chosen_metrics),
        notes=_notes(groups, deltas, excluded),
    )
