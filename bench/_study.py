"""Run a study: for every recipe in a folder, choose one value on the VALIDATION split (seed 0, a small grid),
then train the other seeds with the chosen value and compare the finished runs.

    python bench/_study.py recipes/study2/a --key optim.lr --factors 0.5 1 2 --seeds 0 1 2 \
        --grid-out runs/study2/a-grid --out runs/study2/a --results bench/results/study2/a

    python bench/_study.py recipes/study/isogclr_new_v2_b32.toml --key loss.eta_init --values 1e-3 3e-4 1e-4 \
        --seeds 0 --grid-out runs/study-grid --results bench/results/study/grid_isogclr_new_v2_b32

Grid values are `--values` as given, or `--factors` times the recipe's own value. Only `best` of each grid run's
summary (the validation metrics of its selected epoch) is compared; the test split is read once, by the final
runs' own end-of-training test. The chosen seed-0 run is copied into `--out` (same recipe, same seed: the same
run), the other seeds are trained there, then `clipctl compare` writes `compare.{md,json,png}` beside
`grid.json` (every grid run's validation objective and last logged loss diagnostics), `paired.{md,json}`
(per-seed differences, bench/_paired.py), `by_batch.png` (bench/_by_batch.py) and `diagnostics.{md,json}` (the
final runs' τ and staleness per group, bench/_diagnostics.py). Finished runs are kept, so
a rerun only completes what is missing. `--jobs K` trains K runs at a time with the torch threads split.

A cell whose best value is its grid's smallest or largest is widened: the next point beyond that edge (the same
ratio as to its neighbour) is trained and the choice made again, at most `--widen` times (default 2); grid.json
lists the added points and any cell still at its edge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _by_batch import plot_by_batch
from _common import ROOT, info
from _diagnostics import last_train_record, write_diagnostics
from _paired import write_paired

from clipctl.atomic import atomic_write_json
from clipctl.recipe import load_recipe
from clipctl.run.layout import RunDir
from clipctl.run.reader import completed_summary


@dataclass(frozen=True)
class Job:
    recipe: Path
    key: str
    value: str
    seed: int
    out: Path

    @property
    def name(self) -> str:
        return f"{self.recipe.stem}-{self.key.split('.')[-1]}-{self.value}-seed{self.seed}"

    @property
    def run_dir(self) -> Path:
        return self.out / self.name


def train(job: Job, threads: int) -> Path:
    if completed_summary(RunDir(job.run_dir)) is not None:
        return job.run_dir
    logs = job.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "clipctl",
        "train",
        str(job.recipe),
        f"{job.key}={job.value}",
        f"run.seed={job.seed}",
        "--name",
        job.name,
        "--out",
        str(job.out),
        "--resume",
        "auto",
    ]
    with open(logs / f"{job.name}.log", "ab") as log:
        code = subprocess.run(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": str(threads)}
        ).returncode
    if code != 0:
        raise SystemExit(f"study: {job.name} failed (exit {code}); see {logs / (job.name + '.log')}")
    info(f"study: {job.name} done")
    return job.run_dir


def run_all(jobs: list[Job], parallel: int) -> list[Path]:
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: train(job, threads), jobs))


def grid_values(recipe: Path, key: str, values: list[str] | None, factors: list[float] | None) -> list[str]:
    if values:
        return values
    section, field = key.split(".")
    base = float(getattr(getattr(load_recipe(recipe), section), field))
    return [f"{base * factor:.3g}" for factor in factors or [1.0]]


def grid_rows(jobs: list[Job], runs: list[Path]) -> list[dict[str, Any]]:
    rows = []
    for job, run_dir in zip(jobs, runs):
        summary = json.loads(RunDir(run_dir).summary.read_text())
        rows.append(
            {
                "recipe": job.recipe.stem,
                "value": job.value,
                "run": job.name,
                "best_epoch": summary["best_epoch"],
                "val_objective": summary["best"]["val/objective"],
                "last_train": last_train_record(run_dir),
            }
        )
    return rows


def cell_rows(rows: list[dict[str, Any]], stem: str) -> list[dict[str, Any]]:
    return [row for row in rows if row["recipe"] == stem]


def widened(values: list[str], best: str) -> str | None:
    """The point beyond the grid's edge when `best` is that edge (same ratio as to its neighbour), else None:
    a best value on the edge says the optimum may lie outside the grid."""
    ordered = sorted(values, key=float)
    if len(ordered) < 2 or best not in (ordered[0], ordered[-1]):
        return None
    edge, inner = (ordered[-1], ordered[-2]) if best == ordered[-1] else (ordered[0], ordered[1])
    return f"{float(edge) ** 2 / float(inner):.3g}"


def refuse_other_values(out: Path, key: str, chosen: dict[str, str]) -> None:
    """Final runs of a cell at a value other than its chosen one (the grid changed since) would be compared with
    the new ones as one group: stop before training and say which."""
    field = key.split(".")[-1]
    for stem, value in chosen.items():
        for run_dir in sorted(out.glob(f"{stem}-{field}-*-seed*")):
            if run_dir.name.rsplit("-seed", 1)[0] != f"{stem}-{field}-{value}":
                raise SystemExit(
                    f"study: {run_dir} was trained at another {key} than the chosen {value}; move it out of "
                    f"{out} (compare would group it with the new runs)"
                )


def compare(out: Path, results: Path) -> None:
    clipctl = [sys.executable, "-m", "clipctl", "compare", str(out)]
    markdown = subprocess.run(
        [*clipctl, "--markdown", "--plot", str(results / "compare.png")],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    machine = subprocess.run([*clipctl, "--json"], cwd=ROOT, check=True, capture_output=True, text=True).stdout
    (results / "compare.md").write_text(markdown)
    (results / "compare.json").write_text(machine)
    write_paired(results / "compare.json")
    plot_by_batch(results / "compare.json")
    write_diagnostics(out, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", type=Path, help="a recipe file or a folder of them")
    parser.add_argument("--key", required=True)
    parser.add_argument("--values", nargs="+")
    parser.add_argument("--factors", nargs="+", type=float)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--grid-out", type=Path, required=True)
    parser.add_argument("--out", type=Path, help="where the final runs go (needed with seeds besides 0)")
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--widen", type=int, default=2, help="at most this many points added beyond a grid's edge")
    args = parser.parse_args()
    recipes = sorted(args.recipes.glob("*.toml")) if args.recipes.is_dir() else [args.recipes]
    recipes = [r for r in recipes if not r.stem.startswith("base")]
    values = {r.stem: grid_values(r, args.key, args.values, args.factors) for r in recipes}
    widened_by: dict[str, list[str]] = {r.stem: [] for r in recipes}
    for round_ in range(args.widen + 1):
        grid = [Job(r, args.key, v, 0, args.grid_out) for r in recipes for v in values[r.stem]]
        rows = grid_rows(grid, run_all(grid, args.jobs))
        chosen = {r.stem: max(cell_rows(rows, r.stem), key=lambda row: row["val_objective"])["value"] for r in recipes}
        beyond = {stem: widened(values[stem], best) for stem, best in chosen.items()}
        if round_ == args.widen or not any(beyond.values()):
            break
        for stem, value in beyond.items():
            if value is not None:
                info(f"study: {stem}: best {args.key} = {chosen[stem]} is the grid's edge; adding {value}")
                values[stem].append(value)
                widened_by[stem].append(value)
    for stem, best in chosen.items():
        scores = ", ".join(f"{row['value']}: {100 * row['val_objective']:.2f}" for row in cell_rows(rows, stem))
        edge = " (still the grid's edge)" if beyond[stem] else ""
        info(f"{stem}: {args.key} = {best} chosen on validation{edge} ({scores})")
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        args.results / "grid.json",
        {
            "key": args.key,
            "selected_on": "validation split (best epoch's val/objective), seed 0",
            "rows": rows,
            "chosen": chosen,
            "widened": widened_by,
            "still_at_edge": sorted(stem for stem, value in beyond.items() if value),
            "load": Path("/proc/loadavg").read_text().split()[:3],
        },
        indent=2,
    )
    if args.out is None:
        return
    refuse_other_values(args.out, args.key, chosen)
    final = []
    for recipe in recipes:
        picked = Job(recipe, args.key, chosen[recipe.stem], 0, args.grid_out)
        if 0 in args.seeds and not (args.out / picked.name).exists():
            args.out.mkdir(parents=True, exist_ok=True)
            shutil.copytree(picked.run_dir, args.out / picked.name)
        final += [Job(recipe, args.key, chosen[recipe.stem], seed, args.out) for seed in args.seeds if seed != 0]
    run_all(final, args.jobs)
    compare(args.out, args.results)
    info(f"study: results in {args.results}")


if __name__ == "__main__":
    main()
