"""Evaluate a PI0 checkpoint on LIBERO with openpi's protocol: per-task success table + videos.

    python recipes/eval_libero.py policy.path=/ckpt/pi0_libero suite=libero_goal
    python recipes/eval_libero.py policy.path=runs/x/checkpoints/iter_000010/policy suites=[libero_object,libero_goal] tasks=[0,1] eval.episodes=10

Shorthands: `suite=`, `suites=[...]` (each evaluated in turn), `tasks=[...]` (default:
every task of the suite), `out=<dir>`. Everything else is the training config
(`--config-name`, dotted overrides). Episodes use the suite's openpi episode length
unless env.max_steps is given, and the held-out init states of `eval.init_states`.
Fixtures are placed by `eval.fixture_placement`: upstream (default; LIBERO's per-reset
jitter, as in published numbers) or pinned (one scene per context, as in training).
Writes <out>/eval.csv and eval.md (per task, per suite, overall; eval.md and config.yaml
name the fixture placement), episodes.csv, and videos/<suite>_task<k>.mp4.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ript.recipes.common.config import ConfigError, RIPTConfig, main_config, to_yaml
from ript.recipes.common.eval_table import EpisodeResult, write_episodes_csv, write_tables
from ript.recipes.common.evaluation import evaluate
from ript.recipes.common.factories import make_env, make_policy
from ript.recipes.common.preflight import PreflightError, check_libero_contexts, run_preflight
from ript.recipes.common.video import tile_episodes, write_mp4

SUITE_TASKS = {"libero_spatial": 10, "libero_object": 10, "libero_goal": 10, "libero_10": 10, "libero_90": 90}


def split_shorthands(argv: list[str]) -> tuple[list[str], list[str] | None, list[int] | None, str | None]:
    """Pull suite=/suites=/tasks=/out= out of argv; the rest is the training CLI."""
    rest, suites, tasks, out = [], None, None, None
    for arg in argv:
        key, _, value = arg.partition("=")
        if key in ("suite", "suites"):
            suites = [s.strip() for s in value.strip("[]").split(",") if s.strip()]
        elif key == "tasks":
            try:
                tasks = [int(t) for t in value.strip("[]").split(",") if t.strip()]
            except ValueError as e:
                raise ConfigError(f"tasks={value} must be task indices, e.g. tasks=[0,1]") from e
        elif key == "out":
            out = value
        else:
            rest.append(arg)
    return rest, suites, tasks, out


def evaluate_checkpoint(cfg: RIPTConfig, suites: list[str], tasks: list[int] | None, out_dir: Path, *, max_steps_given: bool) -> list[EpisodeResult]:
    """Evaluate cfg.policy on each suite; write the tables and videos under out_dir."""
    device = torch.device("cuda" if cfg.train.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.train.device == "auto" else cfg.train.device))
    policy = make_policy(cfg, device)
    results: list[EpisodeResult] = []
    for suite in suites:
        if suite not in SUITE_TASKS:
            raise ConfigError(f"suite={suite} is unknown: use one of {list(SUITE_TASKS)}")
        cfg.env.suite = suite
        cfg.env.tasks = tasks if tasks is not None else list(range(SUITE_TASKS[suite]))
        if not max_steps_given:
            cfg.env.max_steps = None  # openpi's per-suite episode length
        env = make_env(cfg, policy, seed=cfg.train.seed)
        try:
            for task in cfg.env.tasks:
                one = dataclasses.replace(cfg, env=dataclasses.replace(cfg.env, tasks=[task]))
                episodes: list[EpisodeResult] = []
                start = time.perf_counter()
                metrics, videos = evaluate(one, env, policy, record_video=cfg.logging.video_every > 0, episodes_out=episodes)
                results += episodes
                if videos:
                    write_mp4(tile_episodes(videos), out_dir / "videos" / f"{suite}_task{task}.mp4", fps=10)
                print(f"{suite} task {task}: {sum(e.success for e in episodes)}/{len(episodes)} "
                      f"({time.perf_counter() - start:.0f}s) {episodes[0].task if episodes else ''}", flush=True)
        finally:
            env.close()
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Config errors exit 2 with one line, before any simulator starts; returns the results for tests."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        rest, suites, tasks, out = split_shorthands(argv)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    cfg = main_config(rest)
    if cfg.env.kind != "libero":
        print("config error: eval_libero evaluates on LIBERO: set env.kind=libero", file=sys.stderr)
        raise SystemExit(2)
    out_dir = Path(out or cfg.logging.output_dir or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    if (out_dir / "eval.csv").exists():
        print(f"config error: {out_dir} already holds an evaluation: choose another out=<dir>", file=sys.stderr)
        raise SystemExit(2)
    suites = suites or [cfg.env.suite]
    try:
        unknown = [s for s in suites if s not in SUITE_TASKS]
        if unknown:
            raise PreflightError(f"suite={unknown[0]} is unknown: use one of {list(SUITE_TASKS)}")
        # device, disk, checkpoint + norm stats vs LIBERO, each suite's tasks and init states, rendering: before loading anything
        run_preflight(cfg, out_dir, contexts=False)
        for suite in suites:
            check_libero_contexts(suite, tasks if tasks is not None else range(SUITE_TASKS[suite]),
                                  {"eval.init_states": cfg.eval.init_states, "env.train_init_states": cfg.env.train_init_states[:1]},
                                  tasks_key="tasks")
    except PreflightError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.yaml").write_text(to_yaml(cfg))
        results = evaluate_checkpoint(cfg, suites, tasks, out_dir, max_steps_given=any(a.startswith("env.max_steps=") for a in rest))
    except ConfigError as e:
        if cfg.debug:
            raise
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    csv_path, md_path = write_tables(results, out_dir, note=f"fixture placement: {cfg.eval.fixture_placement}")
    write_episodes_csv(results, out_dir / "episodes.csv")
    print(md_path.read_text())
    print(f"tables: {csv_path} {md_path}; videos: {out_dir / 'videos'}")
    return {"results": results, "csv": csv_path, "markdown": md_path, "output_dir": out_dir,
            "fixture_placement": cfg.eval.fixture_placement}


if __name__ == "__main__":
    main()
