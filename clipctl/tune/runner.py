"""Running a phase: trials as subprocesses (`clipctl train`), K at a time, with median pruning.

A trial is an ordinary run: its resolved recipe is written to `phaseN/tNNN.toml` and started as
`python -m clipctl train phaseN/tNNN.toml --out phaseN --name tNNN --resume restart` (or behind a launcher
such as `accelerate launch --num_processes 2`), in its own session so a signal reaches the whole process
tree, with `CUDA_VISIBLE_DEVICES` set per parallel slot. The worker watches `metrics.jsonl` for per-epoch
objectives (pruning, divergence) and reads `summary.json` when the process exits. The runner is an
interface (`TrialRunner`): tests pass one that starts a fake trainer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from clipctl.atomic import atomic_write_text
from clipctl.console import format_duration, info, percent
from clipctl.errors import (
    EXIT_DATA,
    EXIT_USAGE,
    ClipctlError,
    DataError,
    InterruptedRun,
    StorageError,
    UsageError,
)
from clipctl.run.layout import SUMMARY_FILE, RunDir, RunStatus
from clipctl.run.reader import MetricsFollower, read_summary
from clipctl.tune.phases import PhasePlan
from clipctl.tune.session import PhaseSession
from clipctl.tune.storage import STORAGE_ERRORS, storage_failure
from clipctl.tune.store import PhaseState, Study, TrialRecord, finite

PROGRESS_EVERY_S = 60.0  # a line per running trial this often, between its per-epoch lines
STOP_GRACE_S = 120.0  # a stopped trainer finishes its step and writes resumable state first
POLL_MIN_S, POLL_MAX_S = 0.05, 1.0  # poll fast right after activity, back off to 1 Hz while trials train
# A trial failing with one of these (the trainer's one-line error or a raw OSError says so) failed for the
# disk it writes to, not for its point: disk full, over quota, read-only, forbidden, over the file-size limit.
OUTSIDE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EFBIG)


@dataclass(frozen=True)
class TrialLaunch:
    phase: int
    trial: int
    name: str
    recipe: Path
    out_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.out_dir / self.name

    @property
    def log(self) -> Path:
        return self.out_dir / f"{self.name}.log"

    def train_args(self) -> list[str]:
        return [str(self.recipe), "--out", str(self.out_dir), "--name", self.name, "--resume", "restart"]


class TrialProcess(Protocol):
    def poll(self) -> int | None: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class TrialRunner(Protocol):
    def start(self, launch: TrialLaunch, slot: int) -> TrialProcess: ...

    def devices(self, slot: int) -> list[str]: ...


def train_command(launcher: str = "") -> list[str]:
    """`python -m clipctl train`, or the launcher's own module mode (`accelerate launch ... -m clipctl train`)."""
    prefix = shlex.split(launcher) if launcher else [sys.executable]
    return [*prefix, "-m", "clipctl", "train"]


def visible_gpus() -> list[str]:
    """GPU ids trials may use: $CUDA_VISIBLE_DEVICES if set, else every device torch sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    if not Path("/proc/driver/nvidia").exists() and shutil.which("nvidia-smi") is None:
        return []  # no NVIDIA driver: skip importing torch just to count zero devices
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA runtime means no GPUs to assign
        return []


def slot_devices(gpus: list[str], parallel: int, slot: int) -> list[str]:
    """Contiguous GPU blocks per slot (G // K each); with fewer GPUs than slots, slots share round-robin."""
    if not gpus:
        return []
    per = len(gpus) // parallel
    if per == 0:
        return [gpus[slot % len(gpus)]]
    return gpus[slot * per : (slot + 1) * per]


def _die_with_parent() -> None:
    """Linux: the trial gets SIGTERM if the tuner dies, so a re-run never races a stray trainer."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class _PopenTrial:
    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen

    def poll(self) -> int | None:
        return self.popen.poll()

    def _signal(self, signum: int) -> None:
        try:
            os.killpg(self.popen.pid, signum)
        except ProcessLookupError:
            pass

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)


def cpu_threads(parallel: int) -> int:
    """Intra-op threads per CPU trial when `parallel` share this machine's cores (at least 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // parallel)


class SubprocessRunner:
    """Starts `command + launch.train_args()`; output goes to `phaseN/tNNN.log` (appended on re-runs).
    `{slot}` in the command becomes the parallel slot number, so multi-process trials running side by
    side can use distinct ports (`accelerate launch --main_process_port 2950{slot}`). CPU trials side by
    side split the cores (`OMP_NUM_THREADS`, unless it is set already): each with torch's default of every
    core, their OpenMP threads spin against each other and a step takes many times longer."""

    def __init__(self, command: list[str] | None = None, *, parallel: int = 1, gpus: list[str] | None = None) -> None:
        self.command = command or train_command()
        self.parallel = parallel
        self.gpus = visible_gpus() if gpus is None else gpus

    def devices(self, slot: int) -> list[str]:
        return slot_devices(self.gpus, self.parallel, slot)

    def start(self, launch: TrialLaunch, slot: int) -> TrialProcess:
        env = dict(os.environ)
        devices = self.devices(slot)
        if devices:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        elif self.parallel > 1:
            env.setdefault("OMP_NUM_THREADS", str(cpu_threads(self.parallel)))
        launch.log.parent.mkdir(parents=True, exist_ok=True)
        with open(launch.log, "ab") as log:
            try:
                command = [part.replace("{slot}", str(slot)) for part in self.command]
                popen = subprocess.Popen(
                    [*command, *launch.train_args()],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_die_with_parent,
                )
            except OSError as err:
                raise UsageError(
                    f"cannot start a trial with {shlex.join(self.command)!r}: {err.strerror}; check --launcher"
                ) from None
        return _PopenTrial(popen)


@dataclass
class _Active:
    record: TrialRecord
    launch: TrialLaunch
    process: TrialProcess
    slot: int
    started: float
    metrics: MetricsFollower
    epochs: int = 0  # the trial recipe's train.epochs
    verdict: str = "continue"
    verdict_epoch: int | None = None
    stop_sent: float | None = None
    seen: dict[str, float] = field(default_factory=dict)  # latest epoch, update and loss read from metrics.jsonl

    def progress(self, objective: str, now: float) -> str:
        """Where the trial is, from what its metrics.jsonl said last: "epoch 3/9, update 120, loss 2.31, ..."."""
        parts = [f"epoch {int(self.seen['epoch'])}/{self.epochs - 1}" if "epoch" in self.seen else "starting"]
        if "step" in self.seen:
            parts.append(f"update {int(self.seen['step'])}")
        if "loss" in self.seen:
            parts.append(f"loss {self.seen['loss']:.4g}")
        if "objective" in self.seen:
            parts.append(f"{objective} {percent(self.seen['objective'])} at epoch {int(self.seen['eval_epoch'])}")
        return ", ".join(parts) + f"; running {format_duration(now - self.started)}"


def _note(active: _Active, record: dict, objective: str) -> None:
    """Keep the latest epoch, update, loss and objective a trial logged (for its progress line)."""
    for key in ("epoch", "step", "loss"):
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            active.seen[key] = value
    value = finite(record.get(objective)) if record.get("type") == "eval" else None
    if value is not None:
        active.seen["objective"], active.seen["eval_epoch"] = value, record.get("epoch", 0)


def describe_params(params: dict[str, object]) -> str:
    def fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    return " ".join(f"{k}={fmt(v)}" for k, v in params.items())


def read_outcome(run_dir: Path, log: Path, objective: str, returncode: int) -> tuple[float | None, str]:
    """(objective, "") for a completed run with a finite best objective, else (maybe None, why it failed)."""
    summary = read_summary(run_dir)[0]
    if summary is not None and returncode == 0 and summary.get("status") == RunStatus.COMPLETED:
        best = summary.get("best") or {}
        value = finite(best.get(objective))
        if value is None:
            return None, f"diverged: {SUMMARY_FILE} best[{objective!r}] = {best.get(objective)!r}"
        return value, ""
    if summary is not None and summary.get("error"):
        return None, f"exit code {returncode}: {summary['error']}"
    if returncode == 0:
        status = summary.get("status") if summary is not None else "missing"
        return None, f"exit code 0 but {SUMMARY_FILE} status is {status!r}"
    return None, f"exit code {returncode}: {_last_line(log) or 'no output'} (log: {log})"


def _last_line(path: Path) -> str:
    try:
        lines = [
            line.strip() for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()
        ]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def error_line(launch: TrialLaunch, code: int) -> str:
    """The trial's one-line error (the trainer prints it last), else its exit code."""
    return _last_line(launch.log).removeprefix("clipctl: error: ") or f"exit code {code}"


def outside_error(launch: TrialLaunch, code: int) -> type[ClipctlError] | None:
    """The study's error class when a trial failed for a reason outside the trial, which would fail every
    trial alike and must not be told to the optimizer as a bad point: its recipe or data (the trainer's exit
    2 or 3), or the disk (full, over quota, read-only, forbidden, over the file-size limit)."""
    if code in (EXIT_USAGE, EXIT_DATA):
        return UsageError if code == EXIT_USAGE else DataError
    if code == 0:
        return None
    summary = read_summary(launch.run_dir)[0] or {}
    text = f"{_last_line(launch.log)} {summary.get('error') or ''}".lower()
    return StorageError if any(os.strerror(e).lower() in text for e in OUTSIDE_ERRNOS) else None


def _set_aside_unresumable(run_dir: Path, starts: int) -> None:
    """A re-run trial whose earlier attempt left files but no resumable state starts fresh: its files are
    kept beside it as `.tNNN.attempt-K` (`--resume auto` refuses such a folder rather than train over it)."""
    run = RunDir(run_dir)
    if starts > 1 and run.has_content() and not run.last_state.is_file():
        os.replace(run_dir, run_dir.with_name(f".{run_dir.name}.attempt-{starts - 1}"))


class PhaseWorker:
    """One worker on one phase: fills `parallel` slots with proposed or orphaned trials until the
    phase's budget is handed out and every trial has finished (a dead worker's trial is re-run here)."""

    def __init__(
        self,
        study: Study,
        plan: PhasePlan,
        runner: TrialRunner,
        *,
        parallel: int = 1,
        log: Callable[[str], None] = info,
        should_stop: Callable[[], bool] = lambda: False,
        progress_every: float = PROGRESS_EVERY_S,
    ) -> None:
        self.study, self.plan, self.runner = study, plan, runner
        self.parallel, self.log, self.should_stop = parallel, log, should_stop
        self.active: dict[int, _Active] = {}
        self.progress_every, self.progress_said = progress_every, time.monotonic()

    @staticmethod
    def retry_failed(study: Study, plan: PhasePlan) -> list[TrialRecord]:
        """Mark the phase's failed trials for re-running; the workers then claim them like orphans."""
        with study.worker(plan.phase) as lease:
            return PhaseSession(study, plan, lease.id).retry_failed()

    def run(self) -> PhaseState:
        with self.study.worker(self.plan.phase) as lease:
            self.session = PhaseSession(self.study, self.plan, lease.id)
            state = self.session.refresh()
            if state.trials:
                self.log(
                    f"phase {self.plan.phase}: resuming: {len(state.finished())} finished, "
                    f"{len(state.running())} running or orphaned, budget {self.plan.planned_trials()}"
                )
            try:
                self._loop()
            except KeyboardInterrupt:
                stopped = self._stop_all()
                raise InterruptedRun(
                    f"tune interrupted: {stopped} running trial(s) stopped; run the same command "
                    f"again to resume them (study {self.study.root})"
                ) from None
            except ClipctlError:  # a trial's usage, data or disk error is the study's: stop the others, report it
                self._stop_all()
                raise
            except STORAGE_ERRORS as err:  # this worker's own writes failed: the disk or the database
                self._stop_all()
                raise storage_failure(err, self.study.storage_label()) from None
            return self.session.refresh()

    def _loop(self) -> None:
        pause = POLL_MIN_S
        while True:
            if self.should_stop():  # a signal handler's request: stop like Ctrl-C, between two steps
                raise KeyboardInterrupt
            busy = False
            for trial, active in list(self.active.items()):
                busy |= self._watch(active)
                code = active.process.poll()
                if code is not None:
                    self._finalise(active, code)
                    del self.active[trial]
                    busy = True
                elif active.stop_sent is not None and time.monotonic() - active.stop_sent > STOP_GRACE_S:
                    active.process.kill()
            free = [s for s in range(self.parallel) if s not in {a.slot for a in self.active.values()}]
            if free:
                trials = self.session.claim_orphans(len(free))
                trials += self.session.propose(len(free) - len(trials))
                for record, slot in zip(trials, free):
                    self._start(record, slot)
                if trials and not self.active:
                    continue  # every new trial failed before starting (invalid recipe): ask again
            if not self.active and not self.session.others_running():
                return  # while other workers' trials run, stay: if one dies, its trial is re-run here
            self._say_progress()
            pause = POLL_MIN_S if busy else min(POLL_MAX_S, pause * 1.5)
            time.sleep(pause)

    def _start(self, record: TrialRecord, slot: int) -> None:
        out_dir = self.study.phase_dir(self.plan.phase)
        launch = TrialLaunch(self.plan.phase, record.trial, record.name, out_dir / f"{record.name}.toml", out_dir)
        try:
            recipe = self.plan.trial_recipe(record.params, record.name, out_dir)
        except UsageError as err:
            self.session.finish(record.trial, None, reason=f"invalid trial recipe: {err}")
            self.log(f"phase {self.plan.phase} {record.name} failed: invalid trial recipe: {err}")
            return
        header = f"# clipctl tune: phase {self.plan.phase} trial {record.name}: {describe_params(record.params)}\n"
        atomic_write_text(launch.recipe, header + recipe.to_toml())
        _set_aside_unresumable(launch.run_dir, record.starts)
        process = self.runner.start(launch, slot)
        self.active[record.trial] = _Active(
            record,
            launch,
            process,
            slot,
            time.monotonic(),
            MetricsFollower(RunDir(launch.run_dir).metrics),
            epochs=recipe.train.epochs,
        )
        devices = self.runner.devices(slot)
        where = f" [GPU {','.join(devices)}]" if devices else ""
        again = " (re-run)" if record.starts > 1 else ""
        self.log(f"phase {self.plan.phase} {record.name} started{again}{where}: {describe_params(record.params)}")

    def _watch(self, active: _Active) -> bool:
        """Report new per-epoch objectives from metrics.jsonl; stop the trial if pruned or diverged.
        Returns whether anything new was read."""
        records, advanced = active.metrics.read_new()
        objective = self.plan.objective
        for record in records:
            _note(active, record, objective)
            if record.get("type") != "eval" or objective not in record:
                continue
            if active.verdict != "continue":
                continue
            epoch = int(record.get("epoch", 0))
            value = finite(record[objective])
            self.log(
                f"phase {self.plan.phase} {active.record.name} epoch {epoch}/{active.epochs - 1}: {objective} = "
                + (percent(value) if value is not None else "NaN")
            )
            verdict = self.session.report_epoch(active.record.trial, epoch, value)
            if verdict != "continue":
                active.verdict, active.verdict_epoch = verdict, epoch
                active.process.terminate()
                active.stop_sent = time.monotonic()
                what = "pruned (below the median)" if verdict == "pruned" else f"diverged ({objective} is NaN)"
                self.log(f"phase {self.plan.phase} {active.record.name} {what} at epoch {epoch}; stopping it")
        return advanced

    def _say_progress(self) -> None:
        """Every `progress_every` seconds, one line per running trial: a trial's epochs can take hours."""
        now = time.monotonic()
        if not self.progress_every or now - self.progress_said < self.progress_every or not self.active:
            return
        self.progress_said = now
        for active in self.active.values():
            self.log(f"phase {self.plan.phase} {active.record.name}: {active.progress(self.plan.objective, now)}")

    def _finalise(self, active: _Active, code: int) -> None:
        self._watch(active)
        wall = time.monotonic() - active.started
        name, trial = active.record.name, active.record.trial
        if active.verdict == "pruned":
            return
        if active.verdict == "continue" and (error := outside_error(active.launch, code)) is not None:
            raise error(
                f"phase {self.plan.phase} {name}: {error_line(active.launch, code)}; the study stopped without a "
                "result for this trial (fix it and run the same command: the trial is re-run)"
            )
        if active.verdict == "diverged":
            raw, reason = None, f"diverged: {self.plan.objective} is NaN at epoch {active.verdict_epoch}"
        else:
            raw, reason = read_outcome(active.launch.run_dir, active.launch.log, self.plan.objective, code)
        record = self.session.finish(trial, raw, reason, wall)
        if record is None:
            return
        best = self.session.state.best()
        best_text = f" (best {percent(best.value)} {best.name})" if best else ""
        value, head = percent(record.value), f"phase {self.plan.phase} {name}"
        if record.status == "completed":
            self.log(f"{head} completed: {self.plan.objective} = {value}{best_text}")
        else:
            self.log(f"{head} failed ({reason}); told penalty {value}{best_text}")

    def _stop_all(self) -> int:
        for active in self.active.values():
            active.process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        try:
            while time.monotonic() < deadline and any(a.process.poll() is None for a in self.active.values()):
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        for active in self.active.values():
            if active.process.poll() is None:
                active.process.kill()
        return len(self.active)
