"""What pruning saves: a toy study with its pruner against the same trials run to the end.

Study A runs the space as configured (median pruner). Study B runs the very same points (A's
trials enqueued in order) with no pruner. Both go through recipes/tune.py and the one trainer;
the driver prints wall and CPU seconds of each and the ratio A/B, and whether both find the
same best point.

    python benchmarks/tune_pruning.py                          # configs/tune_toy_quick.yaml, 8 trials
    python benchmarks/tune_pruning.py space=tune_toy n_trials=16
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))

import optuna

from ript.recipes.training.cli import run_cli
from ript.recipes.training.tuning import PrunerSettings, SearchSpace, load_space, replace_settings

import tune  # noqa: E402  (recipes/tune.py)

REDUCED = "tune_toy_quick"  # configs/tune_toy_quick.yaml: the cheapest toy study


@dataclass
class PruningBench:
    """Which space to run twice and where the two studies go."""

    space: str = REDUCED  # a study YAML path or a name in configs/
    n_trials: Optional[int] = None  # override the space's study.n_trials
    out: str = "runs/tune_pruning"


def timed_study(space: SearchSpace, study_dir: Path, storage: str) -> tuple[optuna.Study, float, float]:
    """Run one study through tune's trial loop; its wall and CPU seconds."""
    t0, c0 = time.perf_counter(), time.process_time()
    study = tune.open_study(space, storage)
    tune.run_trials(study, space, study_dir)
    return study, time.perf_counter() - t0, time.process_time() - c0


def main(bench: PruningBench) -> dict[str, Any]:
    """Study A with the pruner, study B on the same points without it; wall and CPU ratios."""
    out = Path(bench.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    space = load_space(bench.space)
    if bench.n_trials is not None:
        space = replace_settings(space, n_trials=bench.n_trials)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    pruned, wall_a, cpu_a = timed_study(replace_settings(space, name=f"pruned-{stamp}"), out / f"pruned-{stamp}", f"sqlite:///{out}/bench.db")
    points = [t.params for t in pruned.trials]  # the same trials, in order, without a pruner
    unpruned_space = replace_settings(space, name=f"unpruned-{stamp}", pruner=PrunerSettings(kind="none"))
    unpruned_space = SearchSpace(unpruned_space.source, unpruned_space.study, unpruned_space.fixed, unpruned_space.params, points)
    full, wall_b, cpu_b = timed_study(unpruned_space, out / f"unpruned-{stamp}", f"sqlite:///{out}/bench.db")
    result = {
        "space": space.source, "n_trials": space.study.n_trials, "pruner": asdict(space.study.pruner),
        "pruned_trials": sum(t.state == optuna.trial.TrialState.PRUNED for t in pruned.trials),
        "wall_s": {"pruned": wall_a, "unpruned": wall_b}, "cpu_s": {"pruned": cpu_a, "unpruned": cpu_b},
        "wall_ratio": wall_a / wall_b, "cpu_ratio": cpu_a / cpu_b,
        "best": {"pruned": [pruned.best_trial.number, pruned.best_value], "unpruned": [full.best_trial.number, full.best_value]},
        "values_unpruned": [t.value for t in full.trials],
        "states_pruned": [t.state.name for t in pruned.trials],
    }
    print(f"\n{space.study.n_trials} trials, {result['pruned_trials']} pruned: wall {wall_a:.0f} s vs {wall_b:.0f} s unpruned "
          f"(ratio {result['wall_ratio']:.2f}); CPU {cpu_a:.0f} s vs {cpu_b:.0f} s (ratio {result['cpu_ratio']:.2f}); "
          f"best trial {result['best']['pruned']} pruned vs {result['best']['unpruned']} unpruned")
    (out / f"result-{stamp}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    run_cli(PruningBench, main, description=__doc__ or "")
