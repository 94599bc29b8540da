"""`clipctl tune [--phase N] ...` and `tune status | best | importance | plot | repair`."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Any

import typer

from clipctl.console import emit_json, format_duration, info, percent, print_table, warn
from clipctl.errors import EXIT_USAGE, UsageError

DEFAULT_STUDY = Path("runs/tune")

app = typer.Typer(
    help="Tune with the report's three phases (Bayesian search, grid, GP fine-tuning); resumable and parallel.\n\n"
    "Example: clipctl tune --phase 1 --parallel 2",
    invoke_without_command=True,
)


def _study_dir(ctx: typer.Context, study: Path | None) -> Path:
    """A subcommand's --study, else the one given before the subcommand, else runs/tune."""
    return _check_study(study or (ctx.obj or {}).get("study") or DEFAULT_STUDY)


def _check_study(study: Path) -> Path:
    if study.exists() and not study.is_dir():
        raise UsageError(f"--study {study}: is a file, not a study folder; pass a folder (default runs/tune)")
    return study


# Over 60 lines: most of them declare its Typer options; the body only parses, calls and renders.
@app.callback()
def tune(
    ctx: typer.Context,
    phase: int | None = typer.Option(
        None, "--phase", help="1, 2 or 3: runs the built-in recipes/tune/phaseN.toml (a phase or --recipe is required)."
    ),
    recipe: str | None = typer.Option(None, "--recipe", help="A tune recipe instead of the phase's built-in one."),
    study: Path = typer.Option(
        DEFAULT_STUDY, "--study", help="Study folder (study.toml, optuna-journal.log, phaseN/tNNN/)."
    ),
    storage: str | None = typer.Option(
        None,
        "--storage",
        help="Optuna storage for a new study: an RDB URL (sqlite:///ABS/PATH.db, postgresql://...) or a journal "
        "file; default STUDY/optuna-journal.log. Recorded in study.toml.",
    ),
    parallel: int = typer.Option(
        1, "--parallel", min=1, help="Trials run at once, each on its own GPU(s) when there are any."
    ),
    launcher: str = typer.Option(
        "",
        "--launcher",
        help='Start each trial with this, e.g. "accelerate launch --num_processes 2 '
        '--main_process_port 2950{slot}" ({slot}: the parallel slot number).',
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print trials x epochs x measured step time per phase; start nothing."
    ),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Run the phase's failed trials again (their penalties are withdrawn from the search).",
    ),
    submit: str | None = typer.Option(
        None,
        "--submit",
        help="slurm: submit --workers ordinary `clipctl tune` workers on this study through submitit and print "
        "their job ids; local: the same through submitit's local executor.",
    ),
    workers: int = typer.Option(1, "--workers", min=1, help="With --submit: how many workers (jobs)."),
    partition: str | None = typer.Option(None, "--partition", help="With --submit slurm: the SLURM partition."),
    gpus_per_worker: int = typer.Option(
        0, "--gpus-per-worker", min=0, help="With --submit: GPUs per job (local: each worker its own)."
    ),
    time_limit: int = typer.Option(24 * 60, "--time", min=1, help="With --submit: a job's time limit, minutes."),
    progress_every: float = typer.Option(
        60.0,
        "--progress-every",
        min=0,
        help="Seconds between the lines that say where each running trial is (epoch, update, loss, objective); "
        "0: only the per-epoch lines.",
    ),
) -> None:
    """Run a tuning phase, or resume it (same command).  Example: clipctl tune --phase 1 --parallel 2"""
    ctx.obj = {"study": study}
    if ctx.invoked_subcommand is not None:
        return
    if phase is None and recipe is None and not dry_run:
        _no_phase(ctx)
    if submit is not None:
        _submit(ctx, submit, workers, partition, gpus_per_worker, time_limit)
        return
    if workers != 1 or partition or gpus_per_worker:
        raise UsageError("--workers, --partition and --gpus-per-worker go with --submit slurm|local")
    from clipctl.tune.runner import train_command

    if launcher:
        program = shlex.split(launcher)[0] if shlex.split(launcher) else ""
        if not shutil.which(program):
            raise UsageError(f"--launcher {launcher!r}: {program!r} not found on PATH")
    _check_study(study)
    if dry_run:
        _dry_run(phase, recipe, study, parallel, train_command(launcher))
        return
    _run(phase, recipe, study, parallel, train_command(launcher), retry_failed, storage, progress_every)


def _no_phase(ctx: typer.Context) -> None:
    """Bare `clipctl tune` prints help like `clipctl data` (a phase runs for hours: never start one by default);
    options without a phase say which option is missing."""
    if all(ctx.params.get(p.name) == p.default for p in ctx.command.params):
        typer.echo(ctx.get_help())
        raise typer.Exit(EXIT_USAGE)
    raise UsageError("tune: which phase? add --phase 1|2|3 (the built-in recipes/tune/phaseN.toml) or --recipe FILE")


def _submit(ctx: typer.Context, kind: str, workers: int, partition: str | None, gpus: int, time_limit: int) -> None:
    """Check the recipe and the storage here, then submit the workers (they run this command without --submit)."""
    from clipctl.tune.recipe import load_phase_recipe
    from clipctl.tune.store import Study
    from clipctl.tune.submit import check_submission, submit_workers

    args = ctx.params
    if args["dry_run"] or args["retry_failed"]:
        raise UsageError("--submit: run --dry-run or --retry-failed once without --submit, then submit the workers")
    shares = check_submission(kind, workers, gpus, args["parallel"])  # a refusal leaves nothing on disk
    load_phase_recipe(args["phase"], args["recipe"])
    Study(_check_study(args["study"]), storage=args["storage"]).open()
    submission = submit_workers(
        args["study"],
        args["phase"],
        args["recipe"],
        args["storage"],
        kind,
        shares,
        partition=partition,
        gpus_per_worker=gpus,
        time_limit=time_limit,
        parallel=args["parallel"],
        launcher=args["launcher"],
    )
    for job_id in submission.ids:
        typer.echo(job_id)
    info(
        f"submitted {len(submission.jobs)} `clipctl tune` worker(s) on study {args['study']} through submitit "
        f"({kind}); logs under {args['study']}/submitit/"
    )
    submission.finish()


def _dry_run(phase: int | None, recipe: str | None, study: Path, parallel: int, command: list[str]) -> None:
    from clipctl.tune.estimate import estimate_phase
    from clipctl.tune.recipe import load_phase_recipe, tune_phases
    from clipctl.tune.store import Study

    state = Study(study).state()
    phases = [phase] if (phase is not None or recipe) else tune_phases()
    rows, notes = [], []
    total = 0.0
    for number in phases:
        tune_recipe, path = load_phase_recipe(number, recipe)
        info(f"phase {tune_recipe.tune.phase}: measuring the step time of a trial recipe ({path})...")
        est = estimate_phase(tune_recipe, path, state, command, parallel)
        seconds = est.seconds
        total += seconds or 0.0
        rows.append(
            (
                est.phase,
                est.trials,
                est.epochs,
                est.steps_per_epoch if est.steps_per_epoch is not None else "?",
                f"{est.seconds_per_step:.3f}" if est.seconds_per_step is not None else "?",
                format_duration(seconds) if seconds is not None else "?",
            )
        )
        notes += [f"phase {est.phase}: {note}" for note in est.notes]
    print_table(
        f"tune dry run (nothing started; --parallel {parallel}; training steps only, evaluation not included)",
        ["phase", "trials", "epochs", "steps/epoch", "s/step", "est. time"],
        rows,
    )
    for note in notes:
        info(note)
    if len(rows) > 1 and all(r[5] != "?" for r in rows):
        info(f"all phases: about {format_duration(total)} of training")


def _run(
    phase: int | None,
    recipe: str | None,
    study_dir: Path,
    parallel: int,
    command: list[str],
    retry_failed: bool = False,
    storage: str | None = None,
    progress_every: float = 60.0,
) -> None:
    from clipctl.train.interrupt import StopRequest
    from clipctl.tune.estimate import preflight
    from clipctl.tune.phases import open_phase
    from clipctl.tune.recipe import load_phase_recipe
    from clipctl.tune.runner import PhaseWorker, SubprocessRunner
    from clipctl.tune.store import Study

    tune_recipe, path = load_phase_recipe(phase, recipe)
    study = Study(study_dir, storage=storage).open()  # a bad --storage fails before the preflight trains
    if retry_failed and study.frozen_phase(tune_recipe.tune.phase) is None:
        raise UsageError(
            f"--retry-failed: phase {tune_recipe.tune.phase} has not started in {study.root}; "
            f"run it first without --retry-failed"
        )
    if not study.exists() or not study.state().phase(tune_recipe.tune.phase).trials:
        info(f"phase {tune_recipe.tune.phase}: checking datasets and towers (clipctl train --dry-run)...")
        preflight(tune_recipe, path, study.state(), command)  # a missing dataset stops the study before a trial
    plan = open_phase(study, tune_recipe, path)
    if retry_failed:
        retried = PhaseWorker.retry_failed(study, plan)
        info(
            f"phase {plan.phase}: {len(retried)} failed trial(s) to run again"
            + (f": {', '.join(t.name for t in retried)}" if retried else "")
        )
    for note in plan.notes:
        warn(note)
    info(
        f"phase {plan.phase}: {plan.strategy} search over {', '.join(plan.space.names)}; "
        f"{plan.planned_trials()} trials; study {study.root}"
    )
    with StopRequest() as stop:  # Ctrl-C / SIGTERM: stop trials (they save resumable state), exit 130
        state = PhaseWorker(
            study,
            plan,
            SubprocessRunner(command, parallel=parallel),
            parallel=parallel,
            should_stop=lambda: stop.requested,
            progress_every=progress_every,
        ).run()
    best = state.best()
    info(
        f"phase {plan.phase}: "
        + ", ".join(f"{n} {s}" for s, n in state.counts().items() if n)
        + (f"; best {plan.objective} = {percent(best.value)} ({best.name})" if best else "; no trial completed")
    )
    if state.running():
        info("trials still running belong to other workers (or are orphaned: run the same command to resume them)")
    if state.closed is not None and plan.handover.get("kind") == "top_k":
        _print_correlation(study, plan.handover["from_phase"], plan.phase)


def _print_correlation(study: Any, first: int, second: int) -> None:
    from clipctl.tune.phases import phase_correlation

    corr = phase_correlation(study.state(), first, second)
    if corr is None:
        info(f"phase {first} -> phase {second} rank correlation: needs at least 3 shared (loss, optimizer) configs")
        return
    rho = "undefined (constant scores)" if corr["rho"] is None else f"{corr['rho']:+.3f}"
    p = "" if corr["p"] is None else f" (p = {corr['p']:.3g})"
    info(
        f"phase {first} -> phase {second} Spearman rank correlation over {corr['n']} (loss, optimizer) "
        f"configs: rho = {rho}{p}"
    )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


@app.command("status")
def status(
    ctx: typer.Context,
    study: Path | None = typer.Option(None, "--study", help="Study folder (default runs/tune)."),
    phase: int | None = typer.Option(None, "--phase", help="Also list this phase's trials."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable status on stdout."),
) -> None:
    """Phases, trials (running/failed/pruned), best so far and lineage.  Example: clipctl tune status --phase 1"""
    from clipctl.tune.phases import load_plan
    from clipctl.tune.status import study_status
    from clipctl.tune.store import Study, trial_name

    store = Study(_study_dir(ctx, study)).require()
    report = study_status(store)
    if as_json:
        emit_json(report)
        return
    rows = [
        (
            p["phase"],
            p["strategy"],
            f"{p['completed'] + p['failed'] + p['pruned']}/{p['planned']}",
            p["running"],
            p["failed"],
            p["pruned"],
            percent(p["best_value"]) if p["best_trial"] is not None else "-",
            trial_name(p["best_trial"]) if p["best_trial"] is not None else "-",
            "closed" if p["closed"] else "open",
        )
        for p in report["phases"]
    ]
    print_table(
        f"study {store.root}",
        ["phase", "strategy", "finished", "running", "failed", "pruned", "best", "trial", "state"],
        rows,
    )
    info(f"storage {report['storage']}; browse it with: optuna-dashboard {report['storage']}")
    for entry in report["phases"]:
        if entry["lineage"] != "-":
            info(f"phase {entry['phase']} lineage: {entry['lineage']}")
    state = store.state()
    if phase is not None:
        plan, ps = load_plan(store, phase), state.phase(phase)
        trial_rows = [
            (
                t.name,
                t.status + (" (penalty)" if t.flagged else ""),
                percent(t.value) if t.value is not None else "-",
                len(t.epochs),
                " ".join(f"{k}={_fmt(v)}" for k, v in t.params.items()),
                t.reason,
            )
            for t in ps.trials.values()
        ]
        print_table(
            f"phase {phase} trials ({plan.objective})",
            ["trial", "status", "value", "epochs done", "params", "note"],
            trial_rows,
        )
    if {1, 2} <= set(state.phases) and state.phase(2).measured():
        _print_correlation(store, 1, 2)


@app.command("repair")
def repair(
    ctx: typer.Context,
    study: Path | None = typer.Option(None, "--study", help="Study folder (default runs/tune)."),
) -> None:
    """Rewrite a study's journal file without the lines that do not replay (the original is kept beside it).
    Example: clipctl tune repair --study runs/tune"""
    from clipctl.tune.store import Study

    done = Study(_study_dir(ctx, study)).repair()
    if not done.dropped:
        info(f"{done.path}: every line replays ({done.kept} operations); nothing to repair")
        return
    lines = ", ".join(map(str, done.dropped[:10])) + (
        f" and {len(done.dropped) - 10} more" if len(done.dropped) > 10 else ""
    )
    info(
        f"{done.path}: dropped {len(done.dropped)} line(s) that do not replay (line {lines}); kept {done.kept} "
        f"operations; the original is kept as {done.backup}"
    )


@app.command("best")
def best(
    ctx: typer.Context,
    study: Path | None = typer.Option(None, "--study", help="Study folder (default runs/tune)."),
    phase: int | None = typer.Option(
        None, "--phase", help="Phase to take the best trial from (default: the latest with results)."
    ),
    export: Path | None = typer.Option(
        None,
        "--export",
        help="Write the best trial as a full-training recipe here: its tuned values, with the phase's budget "
        "settings (epochs, data fraction, warm-up, max steps) reset to the base recipe's.",
    ),
    as_trial: bool = typer.Option(
        False, "--as-trial", help="With --export: write the trial exactly as it ran (the phase's budget settings)."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --export file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable result on stdout."),
) -> None:
    """The best trial so far, optionally as a recipe.  Example: clipctl tune best --export best.toml"""
    from clipctl.tune.status import best_trial, export_best
    from clipctl.tune.store import Study

    store = Study(_study_dir(ctx, study)).require()
    number, plan, record = best_trial(store, phase)
    run_dir = store.phase_dir(number) / record.name
    if export is not None:
        export_best(store, number, plan, record, export, force, as_trial)
    elif as_trial:
        raise UsageError("--as-trial goes with --export FILE")
    if as_json:
        emit_json(
            {
                "phase": number,
                "trial": record.trial,
                "value": record.value,
                "params": record.params,
                "loss": record.loss,
                "optimizer": record.optimizer,
                "run_dir": str(run_dir),
                "export": str(export) if export else None,
            }
        )
        return
    rows = [
        ("phase", number),
        ("trial", record.name),
        (plan.objective, percent(record.value)),
        ("loss", record.loss),
        ("optimizer", record.optimizer),
        *((k, _fmt(v)) for k, v in record.params.items()),
        ("run dir", str(run_dir)),
    ]
    print_table("best trial", ["item", "value"], rows)
    if export is not None:
        info(f"wrote {export}; run it with `clipctl train {export}`")


@app.command("importance")
def importance(
    ctx: typer.Context,
    study: Path | None = typer.Option(None, "--study", help="Study folder (default runs/tune)."),
    phase: int | None = typer.Option(None, "--phase", help="Phase to analyse (default: the latest with results)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable table on stdout."),
) -> None:
    """Random-forest importance and Spearman correlation per parameter.  Example: clipctl tune importance --phase 1"""
    from clipctl.tune.importance import importance as compute
    from clipctl.tune.phases import load_plan
    from clipctl.tune.status import results_phase
    from clipctl.tune.store import Study

    store = Study(_study_dir(ctx, study)).require()
    state = store.state()
    number = results_phase(store, state, phase)
    plan = load_plan(store, number)
    rows = compute(plan.space, state.phase(number).measured(), seed=plan.seed)
    if as_json:
        emit_json(
            [
                {"parameter": r.name, "importance": r.importance, "spearman": r.spearman, "detail": r.detail}
                for r in rows
            ]
        )
        return
    print_table(
        f"phase {number}: parameter importance for {plan.objective} ({len(state.phase(number).measured())} trials)",
        ["parameter", "importance %", "spearman", "detail"],
        [
            (r.name, round(100 * r.importance, 1), "-" if r.spearman is None else f"{r.spearman:+.3f}", r.detail)
            for r in rows
        ],
    )


@app.command("plot")
def plot(
    ctx: typer.Context,
    study: Path | None = typer.Option(None, "--study", help="Study folder (default runs/tune)."),
    out: Path | None = typer.Option(None, "--out", help="Folder for the PNGs (default STUDY/plots)."),
    phase: int | None = typer.Option(None, "--phase", help="Only this phase (default: every phase with trials)."),
) -> None:
    """PNG figures, objective in percent, higher is better: by optimizer/loss, per trial with the best so far,
    parameter importance, by parameter.  Example: clipctl tune plot"""
    from clipctl.tune.phases import load_plan
    from clipctl.tune.plots import phase_plots
    from clipctl.tune.store import Study

    store = Study(_study_dir(ctx, study)).require()
    state = store.state()
    folder = out or store.root / "plots"
    written = []
    for number in [phase] if phase is not None else store.frozen_phases():
        written += phase_plots(load_plan(store, number), state.phase(number), folder)
    if not written:
        raise UsageError(f"{store.root}: no finished trial to plot yet; see `clipctl tune status`")
    for path in written:
        info(f"wrote {path}")
