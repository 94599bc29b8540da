"""`clipctl train`: the Accelerate loop — per-epoch validation, best checkpoint, exact resume, clean stops.

One optimizer update consumes `train.batch_size` samples (all processes together) in `train.grad_accum`
micro-batches. Each micro-batch is one loss call, so a GCL loss contrasts within the micro-batch and
updates its per-sample estimates per micro-batch: accumulation saves memory but shrinks the negative set
of each step to batch_size / grad_accum (the global estimates s, τ still cover the whole dataset). The
quantities come from the run's `BatchPlan` (clipctl/data/batch_plan.py), made once when the trainer starts.
Evaluation runs on the main process only; the others wait at a barrier.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed

from clipctl.atomic import atomic_link
from clipctl.console import ProgressReporter, info, transcribe, transcript
from clipctl.data.batch_plan import BatchPlan
from clipctl.data.text import trim_padding
from clipctl.errors import (
    ClipctlError,
    InterruptedRun,
    ResumeError,
    RunConflictError,
    StorageError,
    UsageError,
)
from clipctl.losses.config import REMOVED_KEYS
from clipctl.recipe import Recipe
from clipctl.run.checkpoint import (
    FORMAT_VERSION,
    load_checkpoint,
    load_state,
    save_checkpoint,
    save_epoch_checkpoint,
    save_state,
)
from clipctl.run.layout import RunDir, RunStatus, check_run_name
from clipctl.run.reader import completed_summary, read_recipe, read_summary
from clipctl.run.writer import (
    RunClaim,
    append_metrics,
    build_meta,
    build_summary,
    clear_unsaved_attempt,
    remove_stale_temps,
    start_run,
    write_summary,
)
from clipctl.train.components import Components, build_components
from clipctl.train.devices import build_accelerator, resolve_setup
from clipctl.train.dryrun import MEASURED_STEPS, dry_run_plan, time_updates
from clipctl.train.faults import FaultTally
from clipctl.train.host_flags import HostFlags
from clipctl.train.interrupt import ForcedStop, StopRequest
from clipctl.train.optim import build_optimizer
from clipctl.train.rng import rank_rng_state, rng_state, set_rng_state
from clipctl.train.schedule import build_scheduler
from clipctl.train.temperature import inference_temperature
from clipctl.train.tracking import (
    build_trackers,
    check_installed,
    chosen_trackers,
    finish_trackers,
    start_trackers,
    stored_run_id,
    tracked_values,
)

TRACKED_FOR_RESUME = ("data", "model", "loss", "optim", "sched", "train")
TRACKED_RUN_KEYS = ("seed",)  # run.name and run.out_dir may change (a moved run); the seed changes results
UNTRACKED_KEYS = {
    ("train", "dist_timeout_s"),
    ("loss", "state_sharding"),
    ("train", "reset_loss_state"),
    ("data", "num_workers"),
    ("data", "pin_memory"),
    ("data", "persistent_workers"),
    ("train", "save_every_steps"),
    ("train", "save_every_epochs"),
    ("train", "keep_checkpoints"),
    ("data", "on_bad_shard"),
    ("data", "shard_retries"),
    ("data", "shard_timeout_s"),
}  # change no result: how long ranks wait, where the state lives, how the loader feeds, how often it saves, how long
# a shard read may take (a run stopped by an unreachable shard resumes with more patience); or an instruction to the
# resume itself (the [tracking] and [eval] tables are not compared at all)
# Where the training pairs are read from: a run resumes across a moved data root or file when the pairs it finds
# there are the same samples in the same order (the state's `sample_identity`), checked once the data is read.
DATA_LOCATION_KEYS = {("data", "root"), ("data", "image_root"), ("data", "train")}


@dataclass
class TrainOptions:
    out_dir: Path | None = None
    name: str | None = None
    resume: str | None = None  # None/"never": refuse an existing run dir; "auto"; "restart"; or a run dir/state file
    dry_run: bool = False
    stop_after_steps: int | None = None  # test hook: behave as if SIGTERM arrived after this many updates
    on_step: Callable[[int], None] | None = None


@dataclass
class Progress:
    """Where the loop is; all of it goes into the resumable state."""

    epoch: int = 0
    batch: int = 0  # optimizer updates done inside `epoch`
    step: int = 0  # optimizer updates done in total
    best_objective: float = -math.inf
    best_epoch: int | None = None
    best_metrics: dict[str, float] = field(default_factory=dict)
    stale_epochs: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0


def resolve_run_dir(recipe: Recipe, options: TrainOptions) -> RunDir:
    name = options.name or recipe.run.name
    check_run_name(name)
    if options.name:
        recipe.run.name = options.name
    return RunDir(Path(options.out_dir or recipe.run.out_dir) / name)


RESUME_MODES = ("auto", "restart")  # continue the run in its folder; restart also starts over one with no state


def _state_path_to_resume(run: RunDir, resume: str | None, recipe: Recipe) -> Path | None:
    """The state to resume from, or None for a fresh start (a restart in place included); refuses to clobber
    an existing run."""
    if resume in (None, "never"):
        if run.has_content():
            raise RunConflictError(
                f"{run.root}: run directory exists; {_way_on(run)}, or choose --name/--out for a new run"
            )
        return None
    if resume in RESUME_MODES:
        if run.last_state.is_file() or not run.has_content():
            return run.last_state if run.last_state.is_file() else None
        if resume == "auto":
            raise ResumeError(
                f"{run.root}: has run files but no {run.last_state.relative_to(run.root)} to resume from (stopped "
                "before its first save); start it over in place with --resume restart, or choose --name/--out"
            )
        _check_same_recipe(run, recipe, "started with")
        return None
    path = Path(resume)
    path = RunDir(path).last_state if path.is_dir() else path
    if not path.is_file():
        raise ResumeError(f"--resume {resume}: no resumable state at {path}")
    return path


def _way_on(run: RunDir) -> str:
    """How an existing run directory goes on: from its state, or over again when it saved none."""
    if run.last_state.is_file():
        return "continue it with --resume auto"
    if not run.is_run():
        return "it holds no run (no recipe.toml or summary.json)"
    summary, _ = read_summary(run.root)
    if summary is not None and summary.get("status") == RunStatus.COMPLETED:
        return "it completed (--resume auto prints its summary)"
    return "it saved no state yet: start it over in place with --resume restart"


def _completed_run(run: RunDir, recipe: Recipe) -> dict[str, Any] | None:
    """The summary of a run that completed here with this recipe: resuming it has nothing to do.

    Resume follows the recipe, not what is on disk: a run that completed with another recipe is refused
    (exit 5) whether its state is still there or not. A torn summary.json is refused too, unless the state
    is there to resume from (which rewrites the summary).
    """
    try:
        summary = completed_summary(run)
    except ResumeError as err:
        if not run.last_state.is_file():
            raise
        info(f"{err}; resuming from the state")
        return None
    if summary is not None and summary.get("recipe_sha256") != recipe.sha256():
        _check_same_recipe(run, recipe, "completed with")
    return summary


def _check_same_recipe(run: RunDir, recipe: Recipe, what: str) -> None:
    """Refuse (exit 5) when the run's recipe.toml differs from `recipe` in a key that changes results."""
    started, why = read_recipe(run.root)
    if started is None:
        raise ResumeError(
            f"{run.root}: {why}, so which recipe ran here is unknown; move it aside or choose --name/--out"
        )
    difference = _recipe_difference(started, recipe.to_dict(), saved_as="run")
    if difference:
        raise ResumeError(f"{run.root}: {what} another recipe ({difference}); start a new run with --name/--out")


def _removed(section: str, key: str) -> bool:
    """A key later releases dropped (`loss.eps`): a state or run saved with it is still the same recipe."""
    return section == "loss" and key in REMOVED_KEYS


def _recipe_difference(
    saved: dict[str, Any], current: dict[str, Any], saved_as: str = "state", ignore: frozenset = frozenset()
) -> str:
    """The keys that make `saved` another recipe than `current` (the first three), or "" when none does; the
    (section, key) pairs in `ignore` are left to another check."""
    diffs = []
    for section in ("run", *TRACKED_FOR_RESUME):
        a, b = saved.get(section, {}), current.get(section, {})
        keys = TRACKED_RUN_KEYS if section == "run" else sorted(set(a) | set(b))
        for key in keys:
            skipped = (section, key) in UNTRACKED_KEYS or (section, key) in ignore or _removed(section, key)
            if a.get(key) != b.get(key) and not skipped:
                diffs.append(f"{section}.{key}: {saved_as} {a.get(key)!r} vs recipe {b.get(key)!r}")
    return "; ".join(diffs[:3]) + (f" (+{len(diffs) - 3} more)" if len(diffs) > 3 else "")


def _moved_data(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, str]:
    """The data location keys the state was saved with and the recipe now changes, each with both values."""
    a, b = saved.get("data", {}), current.get("data", {})
    return {
        f"data.{key}": f"state {a.get(key)!r} vs recipe {b.get(key)!r}"
        for _, key in sorted(DATA_LOCATION_KEYS)
        if a.get(key) != b.get(key)
    }


COUNT_SUFFIXES = ("_per_s", "_scored", "_total")  # validation keys that are not percentages


def progress_fields(stats: dict[str, float], samples_per_s: float) -> dict[str, float]:
    """What the progress line shows of a logging step's stats."""
    fields = {"loss": stats["loss"], "lr": stats["lr"], "samples/s": samples_per_s}
    tau = stats.get("tau_I_mean", stats.get("tau"))
    if tau is not None:
        fields["tau"] = tau
    if "tau_I_std" in stats:  # do the per-sample temperatures individualise?
        fields["tau_sd"] = stats["tau_I_std"]
    return fields


class Trainer:
    def __init__(self, recipe: Recipe, options: TrainOptions) -> None:
        self.recipe, self.options = recipe, options
        self.run = resolve_run_dir(recipe, options)
        self.setup = resolve_setup(recipe.train, recipe.model.image_model)
        self.trackers = chosen_trackers(recipe.tracking)
        check_installed(self.trackers)
        self.run_id = stored_run_id(self.run) or uuid.uuid4().hex[:16]
        log_with = [] if options.dry_run else build_trackers(self.trackers, recipe, self.run, self.run_id)
        self.accelerator = build_accelerator(recipe.train, self.setup, log_with)
        self.main = self.accelerator.is_main_process
        self.world = self.accelerator.num_processes
        self.host_flags = HostFlags() if self.world > 1 else None
        self.plan = recipe.batch_plan(self.world)  # before the run directory is claimed: a bad plan touches nothing
        self.claim = RunClaim(self.run) if self.main and not options.dry_run else None
        self.finished: dict[str, Any] | None = None
        try:
            self._prepare(recipe, options)
        except BaseException:
            if self.claim is not None:
                self.claim.release(failed_before_start=True)
            raise

    def _prepare(self, recipe: Recipe, options: TrainOptions) -> None:
        """Claim the run directory; unless it holds a completed run, build what training needs."""
        if self.claim is not None:
            self.claim.acquire()
            remove_stale_temps(self.run)
        if not options.dry_run and options.resume not in (None, "never"):
            self.finished = _completed_run(self.run, recipe)  # every rank decides alike: nothing to build or train
            if self.finished is not None:
                return
        self._build(recipe, options)

    def release(self) -> None:
        """Let the datasets this run read be regenerated from now on (nothing was held when a completed run
        was only reported)."""
        parts: Components | None = getattr(self, "parts", None)
        if parts is not None:
            parts.release()

    def _build(self, recipe: Recipe, options: TrainOptions) -> None:
        """Pick the state to resume, then build data, model, loss, optimizer and schedule."""
        self.resume_from = None if options.dry_run else _state_path_to_resume(self.run, options.resume, recipe)
        # a run stopped before its first save, started over in place (its files are replaced at the start)
        self.restarting = self.resume_from is None and options.resume == "restart" and self.run.has_content()
        self.state = load_state(self.resume_from) if self.resume_from else None
        self.moved_data: dict[str, str] = {}
        if self.state is not None:
            self._check_compatible(self.state)
        set_seed(recipe.run.seed, deterministic=recipe.train.deterministic)
        self.parts: Components = build_components(recipe, self.accelerator, self.state, prepare_data=self.main)
        self._check_moved_data()
        self._check_stream_workers()
        _refuse_single_sample_batchnorm(self.parts.model, self.plan)
        self.steps_per_epoch = self.parts.steps_per_epoch(self.plan)
        # on the training device before the optimizer exists: fused optimizers (fusedadam) refuse CPU parameters
        self.parts.model.to(self.accelerator.device)
        self.optimizer = build_optimizer(self.parts.model, self.parts.loss.param_groups(recipe.optim.lr), recipe.optim)
        self.scheduler = build_scheduler(self.optimizer, recipe.sched, recipe.train.epochs, self.steps_per_epoch)
        # self.model is what a step calls (the prepared training module); self.parts.model the CLIP model itself
        self.model, self.optimizer = self.accelerator.prepare(self.parts.train_module, self.optimizer)
        self.progress = Progress()
        self.faults = FaultTally(self.state.get("data_faults") if self.state is not None else None)
        self.last_metrics: dict[str, float] = {}  # the latest validation's, for an epoch checkpoint

    # ------------------------------------------------------------------------------------ state
    def _check_compatible(self, state: dict[str, Any]) -> None:
        current = self.recipe.to_dict()
        if state["recipe_sha256"] != self.recipe.sha256():
            difference = _recipe_difference(state["recipe"], current, ignore=DATA_LOCATION_KEYS)
            if difference:
                raise ResumeError(
                    f"{self.resume_from}: state belongs to another recipe ({difference}); start a new run with --name"
                )
            self.moved_data = _moved_data(state["recipe"], current)
        if state.get("version") != FORMAT_VERSION:
            raise ResumeError(f"{self.resume_from}: state format version {state.get('version')} is not supported")

    def _state_payload(self) -> dict[str, Any]:
        unwrapped = self.parts.model
        return {
            "recipe_sha256": self.recipe.sha256(),
            "recipe": self.recipe.to_dict(),
            "num_samples": self.parts.num_samples,
            "model": unwrapped.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else {},
            "loss": self.parts.loss.state_dict(),
            "rng": self._rng_states(),
            "progress": vars(self.progress).copy(),
            "tokenizer_json": self.parts.tokenizer.to_json(),
            "subset_indices": self.parts.subset_indices,
            "sample_identity": self.parts.sample_identity,
            "data_faults": self.faults.sync(self.parts.data_faults, self.world),
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.parts.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.accelerator.scaler is not None and state["scaler"]:
            self.accelerator.scaler.load_state_dict(state["scaler"])
        self._restore_loss(state)
        self.progress = Progress(**state["progress"])
        mine = rank_rng_state(state["rng"], self.accelerator.process_index, self.world)
        if mine is not None:
            set_rng_state(mine)
        else:
            info(
                f"rank {self.accelerator.process_index}: the state was saved by fewer processes; this rank's dropout "
                "and other random streams start from the seed, so the resumed run is not identical to an "
                "uninterrupted one"
            )

    def _check_moved_data(self) -> None:
        """A state resumes over moved data only when the pairs read there are the samples it was saved with, in
        the same order; otherwise the data keys make it another recipe."""
        if not self.moved_data or self.state is None:
            return
        if self.state.get("sample_identity") != self.parts.sample_identity:
            raise ResumeError(
                f"{self.resume_from}: state belongs to another recipe "
                f"({'; '.join(f'{key}: {values}' for key, values in self.moved_data.items())}; the training pairs "
                "there are not the ones it was saved with); restore the data or start a new run with --name"
            )

    def _check_stream_workers(self) -> None:
        """`data.num_workers` changes no result of a map-style run, but a streamed one deals its shards to
        processes x loader workers: another count gives other batches, so its resume is refused."""
        if self.state is None or not self.parts.streamed:
            return
        saved, current = self.state["recipe"].get("data", {}).get("num_workers"), self.recipe.data.num_workers
        if saved != current:
            raise ResumeError(
                f"{self.resume_from}: data.num_workers: state {saved!r} vs recipe {current!r}; a streamed run deals "
                f"its shards to processes x loader workers, so another count trains other batches; set "
                f"data.num_workers = {saved!r} or start a new run with --name"
            )

    def _restore_loss(self, state: dict[str, Any]) -> None:
        """The per-sample loss state, refused when it belongs to other samples (stored by index: a reordered or
        regenerated dataset of the same size would attach each sample's state to another) unless reset."""
        reset = self.recipe.train.reset_loss_state
        saved, current = state.get("sample_identity"), self.parts.sample_identity
        changed = saved is not None and saved != current  # a state from before identities were kept: not known
        if changed and not reset:
            raise ResumeError(
                f"{self.resume_from}: the training pairs changed since the state was saved (other samples, "
                f"shards or order: identity {saved[:12]} -> {current[:12]}), so the per-sample loss state would "
                "attach to other samples; restore the data, or set train.reset_loss_state = true to restart it"
            )
        self.parts.loss.load_state_dict(state["loss"], reset=reset)
        if changed:
            self.parts.loss.reset_state()
            info(f"{self.resume_from}: the training pairs changed; per-sample loss state restarted (reset_loss_state)")

    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG state, in rank order: each rank draws its own dropout masks, and resuming one from
        rank 0's stream would replay masks it already used."""
        if self.world == 1:
            return [rng_state()]
        from accelerate.utils import gather_object

        # as torch.save bytes: all_gather_object cannot unpickle raw RNG tensors
        buffer = io.BytesIO()
        torch.save(rng_state(), buffer)
        return [torch.load(io.BytesIO(blob), weights_only=True) for blob in gather_object([buffer.getvalue()])]

    def save_state(self) -> None:
        payload = self._state_payload()  # every rank builds it (collectives inside), the main process writes
        if self.main:
            save_state(self.run.last_state, payload)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------------------ run
    def _start_run_dir(self) -> None:
        """Recipe, meta and the metrics log of this start (main process); TensorBoard when enabled."""
        if not self.main:
            return
        meta = build_meta(
            self.recipe,
            self.world,
            str(self.accelerator.device),
            self.accelerator.mixed_precision,
            self.setup.sources(),
        )
        meta["run_id"] = self.run_id  # what the trackers know this run by, across its resumes
        resumed_at = (self.progress.step, self.progress.epoch) if self.state is not None else None
        if self.restarting:
            clear_unsaved_attempt(self.run)
        start_run(self.run, self.recipe, meta, resumed_at=resumed_at)
        if self.trackers:
            start_trackers(self.accelerator, self.recipe)

    def _write_summary(
        self, status: RunStatus, error: str | None = None, test: dict[str, Any] | None = None, together: bool = False
    ) -> dict[str, Any]:
        """Every rank builds the summary (`train` returns it); the main process writes it. `together`: every rank
        writes it at this point (the end of the run), so the data fault counts are summed over them first."""
        summary = build_summary(
            status,
            self.recipe,
            self.progress,
            world_size=self.world,
            train_subset=self.parts.train_subset,
            sample_identity=self.parts.sample_identity,
            error=error,
            test=test,
        )
        mine = self.parts.data_faults
        summary.update(self.faults.sync(mine, self.world) if together else self.faults.latest(mine))
        if self.main:
            write_summary(self.run, summary)
        return summary

    def fit(self) -> dict[str, Any]:
        """Train (or resume) to the end; the run directory stays claimed until this returns."""
        try:
            if self.finished is not None:
                info(f"{self.run.root}: already completed; nothing to resume (choose --name for a new run)")
                return self.finished
            with self._console_log():
                return self._fit()
        finally:
            finish_trackers(self.accelerator)
            if self.claim is not None:
                self.claim.release()

    @contextlib.contextmanager
    def _console_log(self) -> Iterator[None]:
        """train.log (main process): this start's console output after the earlier starts' when it resumes, ending
        in the error line of a failure (the CLI prints that line on screen)."""
        if not self.main:
            yield
            return
        try:
            handle = self.run.log.open("a" if self.state is not None else "w", encoding="utf-8", buffering=1)
        except OSError as err:
            raise self._storage_error(err) from None
        try:
            with transcript(handle):
                try:
                    yield
                except ClipctlError as err:
                    transcribe(f"clipctl: error: {err}")
                    raise
                except BaseException as err:
                    transcribe(f"{type(err).__name__}: {err}")
                    raise
        finally:
            with contextlib.suppress(OSError):  # a full disk: the run's own writes have reported it
                handle.close()

    def _fit(self) -> dict[str, Any]:
        if self.state is not None:
            self._restore(self.state)
            if self.moved_data:
                moved = ", ".join(self.moved_data)
                info(f"{self.resume_from}: the data moved ({moved}); the same training pairs are there")
            info(f"resuming {self.run.root} at epoch {self.progress.epoch}, update {self.progress.step}")
        try:
            self._start_run_dir()
            self._write_summary(RunStatus.RUNNING)
        except OSError as err:
            raise self._storage_error(err) from None
        try:
            with StopRequest() as stop:
                self._loop(stop)
                test = self._final_test()
        except InterruptedRun:
            raise
        except ForcedStop as forced:
            message = f"stopped at once by a second {forced.signal_name} at update {self.progress.step}"
            self._write_summary_safely(RunStatus.INTERRUPTED, message)
            raise InterruptedRun(
                f"{message}; the last saved state is in {self.run.state_dir} (resume with --resume auto)"
            ) from None
        except ClipctlError as err:
            self._write_summary_safely(RunStatus.FAILED, str(err))
            raise
        except OSError as err:
            error = self._storage_error(err)
            self._write_summary_safely(RunStatus.FAILED, str(error))
            raise error from None
        except Exception as err:
            self._write_summary_safely(RunStatus.FAILED, f"{type(err).__name__}: {err}")
            raise
        return self._write_summary(RunStatus.COMPLETED, test=test, together=True)

    def _storage_error(self, err: OSError) -> StorageError:
        """A failed write, named with the way back once its cause is cleared: continue from the saved state,
        or start over in place when the run saved none yet (`--resume auto` would refuse it)."""
        if self.run.last_state.is_file():
            return StorageError.from_os_error(err, then="continue this run with --resume auto")
        return StorageError.from_os_error(err, then="start this run over with --resume restart (it saved no state yet)")

    def _write_summary_safely(self, status: RunStatus, error: str) -> None:
        """Record a failure; when the disk itself is the failure, the original error is what gets reported."""
        try:
            self._write_summary(status, error)
        except OSError:
            pass

    def _loop(self, stop: StopRequest) -> None:
        cfg = self.recipe.train
        while self.progress.epoch < cfg.epochs:
            epoch = self.progress.epoch
            self._train_epoch(epoch, stop)
            self.progress.epoch += 1
            self.progress.batch = 0
            improved = self._validate(epoch)
            self.save_state()
            if self._epoch_checkpoint_due():
                self._save_epoch_checkpoint()
            if cfg.early_stop_patience and not improved and self.progress.stale_epochs >= cfg.early_stop_patience:
                info(f"early stop: no validation improvement for {self.progress.stale_epochs} epochs")
                break
            if cfg.max_steps and self.progress.step >= cfg.max_steps:
                break

    def _should_stop(self, stop: StopRequest) -> bool:
        requested = stop.requested or (
            self.options.stop_after_steps is not None and self.progress.step >= self.options.stop_after_steps
        )
        return requested if self.host_flags is None else self.host_flags.any(requested)

    def _interrupt(self, stop: StopRequest) -> None:
        self.save_state()
        self._write_summary(
            RunStatus.INTERRUPTED, f"stopped by {stop.signal_name or 'request'} at update {self.progress.step}"
        )
        raise InterruptedRun(
            f"interrupted at epoch {self.progress.epoch}, update {self.progress.step}; state saved in "
            f"{self.run.state_dir} (resume with --resume auto)"
        )

    # Over 60 lines: the step loop; fetch, update, logging, progress, checkpoints and the stop check read best in order.
    def _train_epoch(self, epoch: int, stop: StopRequest) -> None:
        cfg, p = self.recipe.train, self.progress
        loader = self.parts.train_loader(self.plan, epoch, steps_done=p.batch)
        self.model.train()
        total = self.steps_per_epoch
        if cfg.max_steps:
            total = min(total, max(cfg.max_steps - (p.step - p.batch), 0))
        reporter = (
            ProgressReporter(f"epoch {epoch}/{cfg.epochs - 1}", total, "step", every_seconds=10.0)
            if self.main
            else None
        )
        if reporter is not None:
            reporter.update(0, completed=p.batch)
        micro_batches = iter(loader)
        log_every = self.recipe.tracking.log_every_steps
        window_start, window_samples, wait_seconds = time.perf_counter(), 0, 0.0
        while p.batch < total:
            step_start = time.perf_counter()
            fetched = []
            for _ in range(self.plan.grad_accum):
                try:
                    fetched.append(next(micro_batches))
                except StopIteration:
                    break
            if len(fetched) < self.plan.grad_accum:
                break
            wait_seconds += time.perf_counter() - step_start
            log_now = (p.step + 1) % log_every == 0 or p.batch + 1 == total
            stats = self._update(fetched, epoch, log=log_now)
            step_seconds = time.perf_counter() - step_start
            p.batch += 1
            p.step += 1
            samples = self.plan.global_batch
            p.samples_seen += samples
            p.train_seconds += step_seconds
            window_samples += samples
            if self.options.on_step is not None:
                self.options.on_step(p.step)
            if log_now:
                elapsed = time.perf_counter() - window_start
                record = {
                    "type": "train",
                    "epoch": epoch,
                    "step": p.step,
                    **stats,
                    "samples_per_s": window_samples / elapsed if elapsed > 0 else None,
                    "data_wait_share": wait_seconds / elapsed if elapsed > 0 else None,
                }
                self._log(record)
                window_start, window_samples, wait_seconds = time.perf_counter(), 0, 0.0
            if reporter is not None:
                reporter.update(1, **(progress_fields(stats, samples / step_seconds) if log_now else {}))
            if cfg.save_every_steps and p.step % cfg.save_every_steps == 0:
                self.save_state()
            if self._should_stop(stop):
                if reporter is not None:
                    reporter.close()
                self._interrupt(stop)
        if reporter is not None:
            reporter.close()

    def dry_run(self) -> dict[str, Any]:
        """`--dry-run`: time a few real updates and extrapolate them to the whole recipe; writes nothing."""
        loader = iter(self.parts.train_loader(self.plan, 0, steps_done=0))
        steps = min(MEASURED_STEPS + 1, self.steps_per_epoch)
        durations = time_updates(lambda batches: self._update(batches, epoch=0), loader, self.plan.grad_accum, steps)
        return dry_run_plan(
            self.recipe,
            durations,
            run_dir=self.run.root,
            world_size=self.world,
            device=str(self.accelerator.device),
            precision=self.accelerator.mixed_precision,
            chosen_by=self.setup.sources(),
            num_samples=self.parts.num_samples,
            steps_per_epoch=self.steps_per_epoch,
        )

    def _update(
        self, micro_batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], epoch: int, log: bool = True
    ) -> dict[str, float]:
        """One optimizer update over `grad_accum` micro-batches; returns logging stats when `log`, else {}.

        Between logging steps nothing is read back from the device but the loss's NaN/inf guard, so an
        accelerator never waits for the host.
        """
        device = self.accelerator.device
        loss_fn = self.parts.loss
        losses: list[torch.Tensor] = []
        stats: dict[str, float] = {}
        for i, (images, tokens, index) in enumerate(micro_batches):
            if not tokens.is_floating_point():  # token ids (cached tower features are floats)
                tokens = trim_padding(tokens, self.parts.tokenizer.pad_id)
            images = images.to(device, non_blocking=True)
            if self.recipe.model.channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            tokens, index = tokens.to(device, non_blocking=True), index.to(device, non_blocking=True)
            last = i == len(micro_batches) - 1
            sync = contextlib.nullcontext() if last else self.accelerator.no_sync(self.model)
            with sync:
                with self.accelerator.autocast():
                    image_features, text_features = self.model(images, tokens)
                out = loss_fn(
                    image_features.float(),
                    text_features.float(),
                    index,
                    epoch=epoch,
                    step=self.progress.step,
                    stats=log,
                )
                self.accelerator.backward(out.loss / len(micro_batches))
            if log:
                losses.append(out.loss.detach())
                stats = dict(out.stats)
        loss_fn.reduce_gradients()
        if self.recipe.optim.clip_grad_norm > 0:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            self.accelerator.clip_grad_norm_(params, self.recipe.optim.clip_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        loss_fn.after_optimizer_step()
        self.scheduler.step_update(self.progress.step + 1)
        if not log:
            return {}
        total_loss = 0.0
        for loss in losses:
            total_loss += float(loss) / len(micro_batches)
        stats.update(loss=total_loss, lr=self.optimizer.param_groups[0]["lr"])
        return stats

    def _log(self, record: dict[str, Any]) -> None:
        if not self.main:
            return
        append_metrics(self.run, record)
        if self.trackers:
            self.accelerator.log(tracked_values(record), step=record["step"])

    def _validate(self, epoch: int) -> bool:
        """Evaluate on the selection split, keep the best checkpoint; True when this epoch improved."""
        p = self.progress
        if epoch + 1 != self.recipe.train.epochs and (epoch + 1) % self.recipe.eval.every_epochs:
            return False
        improved = False
        if self.main:
            metrics = self.parts.evaluate(self.parts.model, split="val", precision=self.accelerator.mixed_precision)
            self.last_metrics = metrics
            self._log({"type": "eval", "epoch": epoch, "step": p.step, "split": self.recipe.eval.select_on, **metrics})
            objective = metrics["val/objective"]
            improved = objective > p.best_objective
            if improved:
                p.best_objective, p.best_epoch, p.best_metrics = objective, epoch, metrics
                self._save_best(metrics, epoch)
            info(
                f"epoch {epoch}: "
                + " ".join(
                    f"{k.removeprefix('val/')}={100 * v:.2f}"
                    for k, v in metrics.items()
                    if k.startswith("val/") and not k.endswith(COUNT_SUFFIXES)
                )
            )
        flag = torch.tensor([1.0 if improved else 0.0], device=self.accelerator.device)
        improved = bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
        p.stale_epochs = 0 if improved else p.stale_epochs + 1
        self._sync_best()
        return improved

    def _sync_best(self) -> None:
        """Only the main process evaluates; share its bookkeeping so every rank's state is identical."""
        if self.world == 1:
            return
        from accelerate.utils import broadcast_object_list

        payload = [(self.progress.best_objective, self.progress.best_epoch, self.progress.best_metrics)]
        broadcast_object_list(payload, from_process=0)
        self.progress.best_objective, self.progress.best_epoch, self.progress.best_metrics = payload[0]

    def _checkpoint_fields(self, metrics: dict[str, float], epoch: int) -> dict[str, Any]:
        """What `clipctl eval` reads of a checkpoint (`checkpoint_fields`' arguments)."""
        return {
            "model_state": self.parts.model.state_dict(),
            "recipe_toml": self.recipe.to_toml(),
            "tokenizer_json": self.parts.tokenizer.to_json(),
            "tokenizer_max_len": self.parts.tokenizer.max_len,
            "metrics": metrics,
            "epoch": epoch,
            "temperature": inference_temperature(self.parts.loss),
            "preprocess": self.recipe.preprocess().to_record(),
        }

    def _save_best(self, metrics: dict[str, float], epoch: int) -> None:
        save_checkpoint(self.run.checkpoint, **self._checkpoint_fields(metrics, epoch))

    def _epoch_checkpoint_due(self) -> bool:
        """`train.save_every_epochs`: after every N-th epoch, and after the last."""
        every, done = self.recipe.train.save_every_epochs, self.progress.epoch
        return bool(every) and (done % every == 0 or done == self.recipe.train.epochs)

    def _save_epoch_checkpoint(self) -> None:
        """checkpoints/epoch_N.pt after N epochs (resumable, and `clipctl eval` reads it), epoch_latest.pt as its
        second name, and only the newest `train.keep_checkpoints` numbered ones kept."""
        payload = self._state_payload()  # every rank (collectives inside), the main process writes
        if self.main:
            done = self.progress.epoch
            path = self.run.epoch_checkpoint(done)
            save_epoch_checkpoint(path, payload, **self._checkpoint_fields(self.last_metrics, done - 1))
            atomic_link(path, self.run.latest_epoch_checkpoint)
            keep = self.recipe.train.keep_checkpoints
            numbered = self.run.epoch_checkpoints()
            for number in list(numbered)[: -keep if keep else 0]:
                numbered[number].unlink(missing_ok=True)
        self.accelerator.wait_for_everyone()

    def _final_test(self) -> dict[str, Any] | None:
        """Report the best checkpoint on the test splits (never used for selection)."""
        test = None
        if self.main and self.run.checkpoint.is_file():
            model = self.parts.model
            model.load_state_dict(load_checkpoint(self.run.checkpoint)["model"])
            test = self.parts.evaluate(model, split="test", precision=self.accelerator.mixed_precision)
            self._log({"type": "test", "epoch": self.progress.best_epoch, "step": self.progress.step, **test})
        self.accelerator.wait_for_everyone()
        return test


def _refuse_single_sample_batchnorm(model: torch.nn.Module, plan: BatchPlan) -> None:
    """BatchNorm over one sample normalises it to zero (or raises deep inside torch): refuse it up front."""
    if plan.micro_batch < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise UsageError(
            f"the micro-batch train.batch_size / train.grad_accum / processes = {plan.global_batch} / "
            f"{plan.grad_accum} / {plan.world_size} = {plan.micro_batch} sample per process and loss call is too "
            "few for the model's BatchNorm layers; raise train.batch_size or lower train.grad_accum"
        )


def train(recipe: Recipe, options: TrainOptions) -> dict[str, Any]:
    """Train `recipe` into its run directory; returns the summary (see DESIGN.md)."""
    trainer = Trainer(recipe, options)
    try:
        if options.dry_run:
            return trainer.dry_run()
        return trainer.fit()
    finally:
        trainer.release()
