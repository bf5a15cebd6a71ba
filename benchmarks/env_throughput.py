"""LIBERO env throughput: what lazy rendering, chunks, soft resets and workers buy.

    python benchmarks/env_throughput.py [steps=40] [camera=256] [repeats=3] [skip_workers=true] [--dry-run]

Prints simulator steps/s of (a) plain LIBERO rendering both cameras every step
(OffScreenRenderEnv.step), (b) LiberoEnv one action per step, (c) LiberoEnv with
10-action chunks and lazy rendering, (d) physics only (no cameras), (e) two
ParallelEnv workers vs one (chunks of 10), and reset times soft vs hard, with
ratios. Targets on a 2-core CPU: b/a >= 0.97, c/a >= 5, e >= 1.7, soft <= 25% hard.
The machine's other load moves these numbers: compare ratios from one run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
import psutil
import torch

import ript.envs  # noqa: F401  (MUJOCO_GL)
from ript.envs import LiberoEnv, make_libero_env
from ript.envs.libero_env import SETTLE_ACTION, _import_libero, get_suite, load_init_states
from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError

SUITE, TASK = "libero_object", 0


@dataclass
class ThroughputConfig:
    steps: int = 40  # simulator steps per measurement
    camera: int = 256  # camera height = width
    repeats: int = 3  # alternating a/b measurements; medians are reported
    skip_workers: bool = False  # skip (e), which starts worker processes


def validate(cfg: ThroughputConfig) -> None:
    """Sizes, before any simulator is built."""
    if cfg.steps < 1 or cfg.camera < 1 or cfg.repeats < 1:
        raise ConfigError(f"steps, camera and repeats must be >= 1, got {cfg.steps}, {cfg.camera} and {cfg.repeats}")


def _actions(n: int, seed: int = 0) -> np.ndarray:
    a = np.random.default_rng(seed).uniform(-0.3, 0.3, (n, 7))
    a[:, -1] = -1.0
    return a


def plain_libero(steps: int, camera: int) -> float:
    """Steps/s of LIBERO's own loop (every step rendered): the baseline of the ratios."""
    _, get_libero_path, OffScreenRenderEnv = _import_libero()
    suite = get_suite(SUITE)
    task = suite.get_task(TASK)
    env = OffScreenRenderEnv(
        bddl_file_name=os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file),
        camera_heights=camera, camera_widths=camera, ignore_done=True,
    )
    env.reset()
    env.set_init_state(load_init_states(suite, TASK)[0])
    for _ in range(3):
        env.step(SETTLE_ACTION)
    acts = _actions(steps)
    t0 = time.perf_counter()
    for a in acts:
        env.step(a)
    rate = steps / (time.perf_counter() - t0)
    env.close()
    return rate


def liberoenv_rate(env: LiberoEnv, steps: int, chunk: int | None) -> float:
    """Simulator steps/s of LiberoEnv, one action or one chunk per env step."""
    td = env.reset()
    n = 1 if chunk is None else chunk
    acts = torch.as_tensor(_actions(steps), dtype=torch.float32)
    done_steps = 0
    t0 = time.perf_counter()
    for i in range(0, steps, n):
        a = acts[i] if chunk is None else acts[i : i + n]
        out = env.step(td.set("action", a))
        td = out["next"]
        done_steps += int(td["steps_executed"].item())
    return done_steps / (time.perf_counter() - t0)


def physics_rate(env: LiberoEnv, steps: int) -> float:
    """Steps/s of the physics alone (no rendering): the ceiling of any env speed-up."""
    env.reset()
    rs = env.sim.robosuite_env
    acts = _actions(steps)
    t0 = time.perf_counter()
    for a in acts:
        rs.step(a)  # cameras stay disabled between decision steps
    return steps / (time.perf_counter() - t0)


def reset_times(env: LiberoEnv, n: int = 3) -> tuple[float, float]:
    """Mean seconds of a soft reset (state restore) and of a hard one (simulator rebuilt)."""
    soft, hard = [], []
    for i in range(n):
        t0 = time.perf_counter()
        env.sim.reset(i)
        soft.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        env.sim.reset(i, hard=True)
        hard.append(time.perf_counter() - t0)
    return float(np.median(soft)), float(np.median(hard))


def _cpu_seconds() -> float:
    """CPU time (user + system, all threads) of this process and its live children, e.g. env workers."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def workers_rate(num: int, steps: int, camera: int) -> tuple[float, float]:
    """(sim steps/s, cores busy) of `num` workers stepping 10-action chunks.

    Cores busy = CPU seconds of this process and its workers (llvmpipe's render threads
    included) per wall second: one worker that already keeps 1.3 of 2 cores busy caps
    two workers at 2 / 1.3 of its rate, however well they scale.
    """
    env = make_libero_env(SUITE, task=TASK, num_envs=num, action_chunk=10, camera_size=camera, max_steps=10_000)
    td = env.reset()
    acts = torch.as_tensor(_actions(10), dtype=torch.float32).expand(*env.batch_size, 10, 7)
    td = env.step(td.set("action", acts.clone()))["next"]  # warm-up
    t0, cpu0 = time.perf_counter(), _cpu_seconds()
    total = 0
    for _ in range(max(1, steps // 10)):
        td = env.step(td.set("action", acts.clone()))["next"]
        total += int(td["steps_executed"].sum().item())
    wall = time.perf_counter() - t0
    busy = (_cpu_seconds() - cpu0) / wall
    env.close()
    return total / wall, busy


def measure(args: ThroughputConfig) -> None:
    """Every measurement (a)-(e) and their ratios."""
    rows = {}
    # a and b run the same renders, so their ratio is mostly llvmpipe's run-to-run noise:
    # alternate them `repeats` times and compare medians.
    a_runs, b_runs = [], []
    for _ in range(args.repeats):
        a_runs.append(plain_libero(args.steps, args.camera))
        single = LiberoEnv(SUITE, TASK, camera_size=args.camera, max_steps=10_000)
        b_runs.append(liberoenv_rate(single, args.steps, None))
        single.close()
    rows["a plain LIBERO, 2 cameras every step"] = a = float(np.median(a_runs))
    rows["b LiberoEnv, one action per step"] = b = float(np.median(b_runs))
    single = LiberoEnv(SUITE, TASK, camera_size=args.camera, max_steps=10_000)
    soft, hard = reset_times(single)
    single.close()
    chunked = LiberoEnv(SUITE, TASK, action_chunk=10, camera_size=args.camera, max_steps=10_000)
    rows["c LiberoEnv, 10-action chunks, lazy cameras"] = c = liberoenv_rate(chunked, args.steps * 5, 10)
    rows["d physics only"] = d = physics_rate(chunked, args.steps * 5)
    chunked.close()
    print(f"\nLIBERO {SUITE} task {TASK}, cameras {args.camera}px, torch threads {torch.get_num_threads()}")
    print(f"{'measurement':48s} {'sim steps/s':>12s}")
    for k, v in rows.items():
        print(f"{k:48s} {v:12.2f}")
    print(f"{'reset soft / hard (s)':48s} {soft:8.3f} / {hard:.3f}")
    print("\nratios (target)")
    print(f"  b/a  {b / a:6.2f}  (>= 0.97; per repeat: {', '.join(f'{y / x:.2f}' for x, y in zip(a_runs, b_runs))})")
    print(f"  c/a  {c / a:6.2f}  (>= 5)")
    print(f"  d/a  {d / a:6.2f}  (upper bound for c/a)")
    print(f"  soft/hard reset {soft / hard:6.2%}  (<= 25%)")
    if not args.skip_workers:
        (one, busy1), (two, busy2) = workers_rate(1, args.steps * 5, args.camera), workers_rate(2, args.steps * 5, args.camera)
        cores = os.cpu_count() or 1
        print(f"  e  two workers / one  {two / one:6.2f}  (>= 1.7; {two:.1f} vs {one:.1f} steps/s)")
        print(f"     cores busy: one worker {busy1:.2f}, two workers {busy2:.2f} of {cores}; "
              f"ceiling for two on this machine {min(2.0, cores / busy1):.2f}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    run_cli(ThroughputConfig, measure, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
