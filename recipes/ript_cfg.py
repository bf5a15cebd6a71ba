"""RIPT-CFG: RL post-training of a flow-matching VLA (PI0) on LIBERO, from TorchRL parts.

    python recipes/ript_cfg.py                                   # main job (configs/quick_test.yaml)
    python recipes/ript_cfg.py --config-name toy optim.lr=3e-4   # any key is overridable
    python recipes/ript_cfg.py --config-name quick_test checkpoint.resume=auto logging.output_dir=runs/x
    python recipes/ript_cfg.py --config-name libero_learning train.seed=1   # the LIBERO learning result
    python recipes/ript_cfg.py --config-name rl_training policy.path=/ckpt/pi0 --dry-run   # config + parameter count
    torchrun --nproc_per_node=N recipes/ript_cfg.py --config-name distributed policy.path=/ckpt/pi0

A thin CLI: the config is parsed and validated, the output directory and the checkpoint
to resume from are resolved, preflight checks run (seconds, before minutes of work), and
`ript.recipes.training.trainer.Trainer` runs the loop (collect groups, prepare, update,
evaluate, checkpoint; its docstring has the details). SIGTERM/SIGINT checkpoint and exit 0;
repeated env faults or divergence stop with one line and keep the last good checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: make `ript` importable from a plain checkout too
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ript.recipes.training.checkpoint import CheckpointError, resolve_resume
from ript.recipes.training.config import ConfigError, RIPTConfig, run_main
from ript.recipes.training.distributed import DistInfo, distributed_session
from ript.recipes.training.dry_run import print_dry_run
from ript.recipes.training.faults import RunAborted
from ript.recipes.training.preflight import PreflightError, run_preflight
from ript.recipes.training.trainer import Trainer, resolve_output_dir


def train(cfg: RIPTConfig, on_evaluation: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run RIPT-CFG as configured; returns the final metrics and where the outputs are.

    `on_evaluation(iteration, metrics)` runs after every held-out evaluation (recipes/tune.py reports to Optuna there).
    """
    out_dir = resolve_output_dir(cfg)  # before any work: never touch another run's outputs
    try:
        resume_from = resolve_resume(cfg.checkpoint.resume, out_dir)
    except CheckpointError as e:
        raise ConfigError(str(e)) from e
    try:  # seconds of checks before minutes of work: disk, resume checkpoint, policy checkpoint + norm stats, contexts, rendering
        run_preflight(cfg, out_dir, resume_from=resume_from)
    except PreflightError as e:
        raise ConfigError(str(e)) from e
    backend = None if cfg.distributed.backend == "auto" else cfg.distributed.backend
    with distributed_session(cfg.train.device, backend, cfg.distributed.timeout_s) as dist:
        try:
            return run_trainer(cfg, out_dir, dist, resume_from, on_evaluation)
        except Exception as err:
            if dist.enabled:  # one line per rank saying who failed, then the traceback; the group is destroyed on the way out
                first = str(err).splitlines()[0] if str(err) else ""
                print(f"rank {dist.rank}/{dist.world_size} failed: {type(err).__name__}: {first} (if another rank failed first, "
                      f"its log has the cause; collectives give up after distributed.timeout_s={cfg.distributed.timeout_s})", file=sys.stderr, flush=True)
            raise


def run_trainer(cfg: RIPTConfig, out_dir: Path, dist: DistInfo, resume_from: Path | None,
                on_evaluation: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Build the trainer, resume it if asked, run it; the env workers stop whatever happens."""
    trainer = Trainer(cfg, out_dir, dist)
    trainer.on_evaluation = on_evaluation
    try:
        if resume_from is not None:
            trainer.resume(resume_from)
        return trainer.run()
    finally:
        trainer.close()  # flushes what was logged before a failure


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """CLI entry: `--dry-run` prints the resolved config and the policy size; otherwise trains."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--dry-run" in argv:  # the resolved config and the size of the policy it builds; no env, no outputs
        run_main(print_dry_run, [a for a in argv if a != "--dry-run"])
        return None
    try:
        return run_main(train, argv)
    except RunAborted as err:  # repeated env faults or divergence: one line, the last good checkpoint stays
        print(f"run stopped: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
