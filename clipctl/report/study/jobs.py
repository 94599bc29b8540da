"""Training a study's runs: each one `clipctl train` process of its own (its own log, its own threads), K at a
time. A completed run is kept, so a rerun of a study only trains what is missing; a killed one resumes (or starts over
in place, `--resume restart`, when it was killed before its first save)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from clipctl.console import info
from clipctl.errors import EXIT_INTERRUPTED, ClipctlError
from clipctl.run.layout import RunDir
from clipctl.run.reader import completed_summary


@dataclass(frozen=True)
class Job:
    """One run of a study: a recipe with `key` set to `value`, at `seed`, in the folder `out`."""

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

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "clipctl",
            "train",
            str(self.recipe),
            f"{self.key}={self.value}",
            f"run.seed={self.seed}",
            "--name",
            self.name,
            "--out",
            str(self.out),
            "--resume",
            "restart",
        ]


def train(job: Job, threads: int) -> Path:
    """Train `job` unless it completed before; its output goes to `<out>/logs/<name>.log`."""
    if completed_summary(RunDir(job.run_dir)) is not None:
        return job.run_dir
    log_path = job.out / "logs" / f"{job.name}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        code = subprocess.run(job.command(), stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        # a Ctrl-C reaches the run first: the study stops as interrupted too, and a rerun resumes the run
        stopped = EXIT_INTERRUPTED if code == EXIT_INTERRUPTED else None
        raise ClipctlError(f"study: {job.name} failed (exit {code}); see {log_path}", stopped)
    info(f"study: {job.name} done")
    return job.run_dir


def run_all(jobs: list[Job], parallel: int) -> list[Path]:
    """Every job, `parallel` at a time with the CPU's threads split between them; their run folders in order."""
    threads = max(1, (os.cpu_count() or 1) // parallel)
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(lambda job: train(job, threads), jobs))
