"""Evaluate a PI0 checkpoint on LIBERO with openpi's protocol: per-task success table + videos.

    python recipes/eval_libero.py policy.path=/ckpt/pi0_libero suite=libero_goal
    python recipes/eval_libero.py policy.path=runs/x/checkpoints/iter_000010/policy suites=[libero_object,libero_goal] tasks=[0,1] eval.episodes=10
    python recipes/eval_libero.py suite=libero_goal tasks=[0] --dry-run   # the validated config, then stop

Shorthands: `suite=`, `suites=[...]` (each evaluated in turn), `tasks=[...]` (default:
every task of the suite), `out=<dir>`. Everything else is the training config
(`--config-name`, dotted overrides). Episodes use the suite's openpi episode length
unless env.max_steps is given, and the held-out init states of `eval.init_states`.
`--dry-run` prints the resolved config (and the suites, tasks and output dir) after
validation and stops: no policy, no env, nothing written.
Fixtures are placed by `eval.fixture_placement`: upstream (default; LIBERO's per-reset
jitter, as in published numbers) or pinned (one scene per context, as in training).
Writes <out>/eval.csv and eval.md (per task, per suite, overall; eval.md and config.yaml
name the fixture placement), episodes.csv, and videos/<suite>_task<k>.mp4.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from ript.envs.libero_env import get_suite, suite_sizes
from ript.recipes.training.config import ConfigError, RIPTConfig, main_config, to_yaml
from ript.recipes.training.eval_table import EpisodeResult, write_episodes_csv, write_tables
from ript.algos.evaluation import eval_schedule, evaluate_contexts
from ript.recipes.training.factories import make_collector, make_env, make_group_collector, make_policy
from ript.recipes.training.preflight import PreflightError, check_libero_contexts, run_preflight
from ript.recipes.training.video import episode_frames, tile_episodes, write_mp4


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
    """Evaluate cfg.policy on each suite, task by task, with the trainer's evaluator; videos under out_dir."""
    device = torch.device("cuda" if cfg.train.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.train.device == "auto" else cfg.train.device))
    policy = make_policy(cfg, device)
    results: list[EpisodeResult] = []
    for suite in suites:
        cfg.env.suite = suite
        cfg.env.tasks = tasks if tasks is not None else list(range(len(suite_sizes(suite))))
        if not max_steps_given:
            cfg.env.max_steps = None  # openpi's per-suite episode length
        env = make_env(cfg, policy, seed=cfg.train.seed)
        env.set_fixture_placement(cfg.eval.fixture_placement)
        collector = make_collector(env, policy, cfg)
        source = SimpleNamespace(env=env, collector=collector, batches=iter(collector))
        groups = make_group_collector(source, cfg)
        try:
            for t, task in enumerate(cfg.env.tasks):
                start = time.perf_counter()
                schedule = {ctx: n for ctx, n in eval_schedule(len(cfg.env.tasks), cfg.eval.init_states, cfg.eval.episodes).items() if ctx.task == t}
                records, videos = evaluate_contexts(groups, policy, schedule, group_id_base=10**12 + t * 10**5,
                                                    max_videos=4 if cfg.logging.video_every > 0 else 0)
                instruction = get_suite(suite).get_task(int(task)).language
                episodes = [EpisodeResult(suite, int(task), instruction, r.init_state, r.success, r.steps) for r in records]
                results += episodes
                if videos:
                    write_mp4(tile_episodes([episode_frames(list(zip(*frames)), ok) for frames, ok in videos]),
                              out_dir / "videos" / f"{suite}_task{task}.mp4", fps=10)
                print(f"{suite} task {task}: {sum(e.success for e in episodes)}/{len(episodes)} "
                      f"({time.perf_counter() - start:.0f}s) {instruction}", flush=True)
        finally:
            collector.shutdown()  # closes the env too
            env.close(raise_if_closed=False)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Config errors exit 2 with one line, before any simulator starts; returns the results for tests."""
    argv = sys.argv[1:] if argv is None else argv
    dry_run = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
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
        # each suite's tasks and init states (LIBERO's registry only), then device, disk, checkpoint + norm stats vs LIBERO, rendering
        for suite in suites:
            try:
                n_tasks = len(suite_sizes(suite))
            except ValueError as err:
                raise PreflightError(f"suite={suite} is unknown ({err})") from err
            check_libero_contexts(suite, tasks if tasks is not None else range(n_tasks),
                                  {"eval.init_states": cfg.eval.init_states, "env.train_init_states": cfg.env.train_init_states[:1]},
                                  tasks_key="tasks")
        if dry_run:  # the validated config; the machine checks below and the evaluation are what a real run adds
            print(to_yaml(cfg), end="")
            print(f"eval: suites={suites} tasks={tasks if tasks is not None else 'all'} out={out_dir}")
            return {"config": cfg, "suites": suites, "tasks": tasks, "output_dir": out_dir}
        run_preflight(cfg, out_dir, contexts=False)
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
