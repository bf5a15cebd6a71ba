"""Hyper-parameter search over the one trainer: an Optuna study of RIPT-CFG runs.

    python recipes/tune.py space=tune_toy                       # configs/tune_toy.yaml, results in runs/tune/tune_toy
    python recipes/tune.py space=tune_libero --dry-run          # validate the space and print it
    python recipes/tune.py space=tune_libero --storage postgresql://user@host/db   # one worker per machine

Each trial is `recipes/ript_cfg.py`'s `train` in this process with the base config, the space's
fixed overrides and the trial's sampled keys, in <study_dir>/trials/trial_NNNN; every held-out
evaluation is reported to Optuna and the pruner may stop the run there. The study lives in an
RDB storage (SQLite in the study directory unless --storage names another), so any number of
workers (the same command, on one machine or many) share it and a killed study continues
where it stopped: a trial whose worker died is marked FAIL on the next start (heartbeats) and
its run directory stays. At the end: a table of trials, best.yaml (runnable with
`python recipes/ript_cfg.py --config-path <study_dir> --config-name best`), and the
optimisation-history and parameter-importance plots.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script: make `ript` importable from a plain checkout too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import optuna
from optuna.trial import TrialState

from ript.recipes.ript_cfg import train
from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError, load_config
from ript.recipes.training.tuning import (SearchSpace, best_config_yaml, load_space, make_pruner, make_storage, objective_value,
                                          override, replace_settings, suggest)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class TuneArgs:
    """Which study to run, where it lives, and how many trials it wants."""

    space: str = "tune_toy"  # study YAML: a name in configs/ or a path
    study_dir: Optional[str] = None  # trial run dirs, study.db, best.yaml, plots; None = runs/tune/<study name>
    storage: Optional[str] = None  # Optuna RDB URL shared by all workers (postgresql://...); None = sqlite in study_dir
    n_trials: Optional[int] = None  # override study.n_trials


class TrialInterrupted(RuntimeError):
    """A signal stopped the trial's run early: its value would be wrong, so the trial fails and the worker stops."""


class SurplusTrial(RuntimeError):
    """Another worker started the last wanted trial first: this one fails at once and the worker stops."""


def main(args: TuneArgs) -> optuna.Study:
    """Validate the space, open (or join) the study, run trials until it has enough, then report."""
    space = load_space(args.space)
    if args.n_trials is not None:
        space = replace_settings(space, n_trials=args.n_trials)
    study_dir = Path(args.study_dir or f"runs/tune/{space.study.name}").resolve()
    study_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(space, args.storage or f"sqlite:///{study_dir / 'study.db'}")
    run_trials(study, space, study_dir)
    report(study, space, study_dir)
    return study


def open_study(space: SearchSpace, storage_url: str) -> optuna.Study:
    """Create the study or join it (load_if_exists); the space's enqueued points are added once."""
    study = optuna.create_study(study_name=space.study.name, storage=make_storage(storage_url, space.study), load_if_exists=True,
                                direction=space.study.direction, pruner=make_pruner(space.study.pruner))
    for point in space.enqueue:
        study.enqueue_trial(point, skip_if_exists=True)
    return study


def wanted(study: optuna.Study, n_trials: int) -> int:
    """Trials still to start: n_trials minus the finished and running ones (dead workers' trials are failed first)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    return n_trials - len(study.get_trials(deepcopy=False, states=(*FINISHED, TrialState.RUNNING)))


def run_trials(study: optuna.Study, space: SearchSpace, study_dir: Path) -> None:
    """One trial at a time until the study has n_trials; a fresh seed per trial so parallel workers differ."""
    failures, ours = 0, []
    while wanted(study, space.study.n_trials) > 0:
        study.sampler = optuna.samplers.TPESampler(seed=space.study.sampler_seed + len(study.trials), constant_liar=True)
        try:
            study.optimize(lambda trial: run_trial(trial, space, study_dir), n_trials=1, catch=(ConfigError, SurplusTrial),
                           callbacks=[lambda _, frozen: ours.append(frozen)])
        except TrialInterrupted as stop:  # the trial is marked FAIL; the same command continues the study
            print(f"study interrupted ({stop}): run the same command to continue", file=sys.stderr)
            return
        failures = failures + 1 if ours[-1].state == TrialState.FAIL else 0
        if ours[-1].user_attrs.get("surplus"):
            return
        if failures >= space.study.max_failures:
            print(f"stopping this worker: {failures} trials in a row failed (see the trial table)", file=sys.stderr)
            return


def run_trial(trial: optuna.Trial, space: SearchSpace, study_dir: Path) -> float:
    """One training run through the trainer; every evaluation goes to the pruner, the objective comes from the curve."""
    before = [t for t in study_trials(trial) if t.number < trial.number and t.state != TrialState.FAIL]
    if len(before) >= space.study.n_trials:  # another worker took the last slot between our count and our ask
        trial.set_user_attr("surplus", True)
        raise SurplusTrial(f"the study already has {space.study.n_trials} trials")
    values = suggest(trial, space)
    run_dir = study_dir / "trials" / f"trial_{trial.number:04d}"
    trial.set_user_attr("run_dir", str(run_dir))
    cfg = load_config(space.study.base, [*space.fixed_overrides(), *(override(k, v) for k, v in values.items()),
                                         f"logging.output_dir={run_dir}"])
    curve: list[tuple[int, float]] = []

    def on_evaluation(iteration: int, metrics: dict[str, Any]) -> None:
        success = float(metrics["eval/success_rate"])
        curve.append((iteration, success))
        if success == success:  # a skipped evaluation (NaN) is not reported
            trial.report(objective_value(curve, space.study.objective), iteration)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after iteration {iteration}")

    summary = train(cfg, on_evaluation=on_evaluation)
    if summary["stopped"].startswith("preempted"):
        raise TrialInterrupted(summary["stopped"])
    return objective_value(curve, space.study.objective)


def study_trials(trial: optuna.Trial) -> list[optuna.trial.FrozenTrial]:
    """Every trial of the study so far, as stored (no copy)."""
    return trial.study.get_trials(deepcopy=False)


def report(study: optuna.Study, space: SearchSpace, study_dir: Path) -> None:
    """The trial table, best.yaml and the two plots (importance needs two completed trials)."""
    print_table(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if complete:
        best = study.best_trial
        header = (f"best trial {best.number} of study '{study.study_name}' ({space.source}): {space.study.objective} held-out success "
                  f"{best.value:.3f}\nrun: python recipes/ript_cfg.py --config-path {study_dir} --config-name best")
        (study_dir / "best.yaml").write_text(best_config_yaml(space, best.params, header))
        load_config("best", [], study_dir)  # what we wrote must load as it is
        print(f"best trial {best.number}: {best.value:.3f} {best.params}\n  {study_dir / 'best.yaml'}")
    for path in save_plots(study, study_dir, len(complete)):
        print(f"  {path}")


def print_table(study: optuna.Study) -> None:
    """One row per trial: state, value, last reported iteration, minutes and parameters."""
    print(f"\nstudy '{study.study_name}': {len(study.trials)} trials")
    print(f"{'#':>4}  {'state':8s}  {'value':>6}  {'last it':>7}  {'min':>5}  params")
    for t in study.trials:
        value = f"{t.value:.3f}" if t.value is not None else "-"
        last = max(t.intermediate_values) if t.intermediate_values else "-"
        minutes = f"{t.duration.total_seconds() / 60:.1f}" if t.duration is not None else "-"
        print(f"{t.number:4d}  {t.state.name:8s}  {value:>6}  {last!s:>7}  {minutes:>5}  {t.params}")


def save_plots(study: optuna.Study, study_dir: Path, n_complete: int) -> list[Path]:
    """optimisation_history.png and param_importances.png (matplotlib; importance skipped below two completed trials)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    saved = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        warnings.simplefilter("ignore", UserWarning)  # "some regimes have less than 2 trials": expected in small studies
        plots = [("optimisation_history.png", lambda: ovm.plot_optimization_history(study))]
        if n_complete >= 2:  # PED-ANOVA: no scikit-learn needed
            plots.append(("param_importances.png", lambda: ovm.plot_param_importances(study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())))
        else:
            print(f"parameter importance needs 2 completed trials, the study has {n_complete}: no param_importances.png")
        for name, plot in plots:
            try:
                ax = plot()
            except (ValueError, RuntimeError) as e:  # e.g. no parameter varies over the completed trials
                print(f"no {name}: {str(e).splitlines()[0]}")
                continue
            ax.figure.tight_layout()
            ax.figure.savefig(study_dir / name, dpi=90)
            plt.close(ax.figure)
            saved.append(study_dir / name)
    return saved


def cli(argv: list[str] | None = None) -> optuna.Study | None:
    """`--storage URL` is accepted as well as storage=URL; the rest is key=value (run with -h)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, arg in enumerate(argv):
        if arg == "--storage" and i + 1 < len(argv):
            argv[i:i + 2] = [f"storage={argv[i + 1]}"]
        elif arg.startswith("--storage="):
            argv[i] = arg[2:]
    if "--dry-run" in argv:  # validate and print the space; no storage, no trial
        return run_cli(TuneArgs, dry_run, [a for a in argv if a != "--dry-run"], description=__doc__ or "")
    return run_cli(TuneArgs, main, argv, description=__doc__ or "")


def dry_run(args: TuneArgs) -> None:
    """Print the arguments and the validated space; open no storage, run no trial."""
    for key, value in asdict(args).items():
        print(f"{key}: {value}")
    space = load_space(args.space)
    print(replace_settings(space, n_trials=args.n_trials or space.study.n_trials).describe())


if __name__ == "__main__":
    cli()
