"""`clipctl tune --submit slurm --workers K`: K ordinary `clipctl tune` workers on one shared study, as jobs.

submitit does the cluster part (sbatch scripts, job arrays, logs under `STUDY/submitit/`); each job only runs
the same `python -m clipctl tune ...` a user would type on a node, so nothing here is cluster code and a job
that dies is like any killed worker: its trial is re-run by another worker once its heartbeat stops.
`--submit local` takes the same path through submitit's local executor (jobs are local processes) and waits
for them, which is how the path is tested without a cluster. Local workers share one machine, so they split
it: each gets its own `--gpus-per-worker` GPUs, and without GPUs each CPU trial gets cores / (workers x
parallel) threads; a SLURM job has its node's share to itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clipctl.errors import ClipctlError, UsageError
from clipctl.tune.runner import cpu_threads, visible_gpus
from clipctl.tune.storage import absolute_storage

KINDS = ("slurm", "local")
Share = tuple[tuple[str, str], ...]  # a worker's share of the machine: environment variables set for its job


@dataclass(frozen=True)
class TuneWorker:
    """The job's payload: run one `clipctl tune` worker; its output goes to the job's log files."""

    command: tuple[str, ...]
    cwd: str
    env: tuple[tuple[str, str], ...] = ()  # set over the job's environment

    def __call__(self) -> int:
        env = {**os.environ, **dict(self.env)}
        return subprocess.run(
            list(self.command), cwd=self.cwd, stdin=subprocess.DEVNULL, env=env, check=False
        ).returncode


def worker_command(
    study: Path, phase: int | None, recipe: str | None, storage: str | None, parallel: int, launcher: str
) -> list[str]:
    """The command each job runs: this interpreter, absolute paths (a job may start in another folder)."""
    command = [sys.executable, "-m", "clipctl", "tune", "--study", str(study.resolve()), "--parallel", str(parallel)]
    if phase is not None:
        command += ["--phase", str(phase)]
    if recipe is not None:
        command += ["--recipe", str(Path(recipe).resolve()) if Path(recipe).is_file() else recipe]
    if storage is not None:
        command += ["--storage", absolute_storage(storage)]
    if launcher:
        command += ["--launcher", launcher]
    return command


def check_submission(kind: str, workers: int, gpus_per_worker: int, parallel: int) -> list[Share]:
    """Everything that can refuse a submission, checked before anything is written; returns each worker's
    share of the machine (environment variables; local workers only)."""
    if kind not in KINDS:
        raise UsageError(f"--submit {kind}: expected one of {', '.join(KINDS)}")
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise UsageError(
            "--submit slurm: sbatch is not on PATH, so submitit cannot reach SLURM here; run it on a "
            "login node, or try the same path on this machine with --submit local"
        )
    return local_shares(workers, gpus_per_worker, parallel) if kind == "local" else [()] * workers


def make_executor(kind: str, folder: Path, *, partition: str | None, gpus_per_worker: int, time_limit: int) -> Any:
    """A submitit executor (the submission is checked already): SLURM through `sbatch`, local jobs as processes."""
    import submitit

    executor = submitit.AutoExecutor(folder=str(folder), cluster=kind)
    params: dict[str, Any] = {"name": "clipctl-tune", "timeout_min": time_limit, "nodes": 1, "tasks_per_node": 1}
    if gpus_per_worker:
        params["gpus_per_node"] = gpus_per_worker
    if kind == "slurm" and partition:
        params["slurm_partition"] = partition
    executor.update_parameters(**params)
    return executor


@dataclass
class Submission:
    """The submitted workers' submitit jobs."""

    kind: str
    jobs: list[Any]

    @property
    def ids(self) -> list[str]:
        return [str(job.job_id) for job in self.jobs]

    def finish(self) -> None:
        """Local: wait for every worker; the first that failed is the command's error, with its exit code and
        log. The jobs are dropped here, while the interpreter still runs: submitit's `LocalJob.__del__` fails
        with a traceback when it only runs at interpreter exit."""
        failure: ClipctlError | None = None
        while self.kind == "local" and self.jobs:
            job = self.jobs.pop(0)
            code = job.result()
            if code != 0 and failure is None:
                failure = ClipctlError(
                    f"--submit local: worker job {job.job_id} exited with code {code}; see its log {job.paths.stderr}",
                    exit_code=code,
                )
            del job
        self.jobs.clear()
        if failure is not None:
            raise failure


def submit_workers(
    study: Path,
    phase: int | None,
    recipe: str | None,
    storage: str | None,
    kind: str,
    shares: list[Share],
    *,
    partition: str | None = None,
    gpus_per_worker: int = 0,
    time_limit: int = 24 * 60,
    parallel: int = 1,
    launcher: str = "",
) -> Submission:
    """Submit one worker per share (`check_submission`)."""
    executor = make_executor(
        kind, study / "submitit", partition=partition, gpus_per_worker=gpus_per_worker, time_limit=time_limit
    )
    command = tuple(worker_command(study, phase, recipe, storage, parallel, launcher))
    return Submission(kind, [executor.submit(TuneWorker(command, os.getcwd(), share)) for share in shares])


def local_shares(workers: int, gpus_per_worker: int, parallel: int) -> list[Share]:
    """Each local worker's share of this machine, as environment variables: its own GPUs (submitit's local
    executor would give every job the same first ones), or without GPUs its trials' threads, so that K workers
    x P trials do not each start one thread per core (OMP_NUM_THREADS set by the user is kept)."""
    if gpus_per_worker:
        gpus = visible_gpus()
        if workers * gpus_per_worker > len(gpus):
            raise UsageError(
                f"--submit local: --workers {workers} x --gpus-per-worker {gpus_per_worker} needs "
                f"{workers * gpus_per_worker} GPUs, this machine shows {len(gpus)}; lower one of them"
            )
        return [
            (("CUDA_VISIBLE_DEVICES", ",".join(gpus[i * gpus_per_worker : (i + 1) * gpus_per_worker])),)
            for i in range(workers)
        ]
    if "OMP_NUM_THREADS" in os.environ:
        return [()] * workers
    return [(("OMP_NUM_THREADS", str(cpu_threads(workers * parallel))),)] * workers
