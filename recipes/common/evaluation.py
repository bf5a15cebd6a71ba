"""Evaluation on held-out init states, shared by the training recipe and eval_libero.py.

openpi's protocol: each (task, init state) episode runs from LIBERO's stored initial
state for the suite's episode length, replanning every n_action_steps; an episode
succeeds if the task is solved at any step. Episodes run one per env worker per
round; the first episode of each worker counts (auto-resets after it are ignored).
Fixtures are placed by `eval.fixture_placement` during evaluation (upstream by default:
LIBERO's per-reset jitter, as in published numbers) and by `env.fixture_placement` again after.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import torch
from tensordict import TensorDictBase

from ript.algos.policy import evaluating

from .config import RIPTConfig
from .eval_table import EpisodeResult
from .factories import max_decision_steps, push_episodes
from .video import episode_frames


def evaluate(
    cfg: RIPTConfig,
    env: Any,
    policy: Any,
    *,
    record_video: bool,
    max_videos: int = 4,
    episodes_out: list[EpisodeResult] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> tuple[dict[str, float], list[list[np.ndarray]]]:
    """Success on held-out init states: `eval.episodes` per task, one episode per worker per round.

    `shard=(rank, world_size)` runs only this rank's round-robin share of the episodes
    (DDP: merge the ranks' `episodes_out`); an empty share returns no metrics.
    """
    n_workers = env.batch_size.numel()
    todo = [(t, cfg.eval.init_states[i % len(cfg.eval.init_states)]) for t in cfg.env.tasks for i in range(cfg.eval.episodes)]
    todo = todo[shard[0] :: shard[1]]
    if not todo:
        return {}, []
    results: dict[int, list[bool]] = defaultdict(list)
    videos: list[list[np.ndarray]] = []
    horizon = max_decision_steps(cfg)
    libero = cfg.env.kind == "libero"
    if libero:  # evaluation's own fixture placement (upstream: the published protocol), training's again after
        env.set_fixture_placement(cfg.eval.fixture_placement)
    with evaluating(policy):  # the training flag comes back even if an env worker fails
        for start in range(0, len(todo), n_workers):
            chunk = todo[start : start + n_workers]
            # idle workers replay the first context; their episodes are not counted
            episodes = [{"task_id": t, "init_state_id": s, "group_id": -1} for t, s in chunk + [chunk[0]] * (n_workers - len(chunk))]
            push_episodes(env, episodes, n_workers)
            traj = env.rollout(horizon, policy, break_when_any_done=False, break_when_all_done=True)
            done = traj.get(("next", "done")).reshape(n_workers, traj.shape[-1], -1).any(-1)
            succ = traj.get(("next", "success")).reshape(n_workers, traj.shape[-1], -1).any(-1)
            for w, (task, _) in enumerate(chunk):
                end = int(done[w].nonzero()[0]) if done[w].any() else traj.shape[-1] - 1
                ok = bool(succ[w, : end + 1].any())
                results[task].append(ok)
                if episodes_out is not None:
                    raw = traj[w, 0].get("task", "") if "task" in traj.keys() else ""
                    instruction = getattr(raw, "data", raw)
                    episodes_out.append(EpisodeResult(cfg.env.suite, task, str(instruction), chunk[w][1], ok, end + 1))
                if record_video and len(videos) < max_videos:
                    cams = _camera_streams(traj[w, : end + 1])
                    if cams:
                        videos.append(episode_frames(cams, ok))
        env.clear_contexts()
    if libero:  # (a failed evaluation rebuilds the env, with training's placement)
        env.set_fixture_placement(cfg.env.fixture_placement)
    trials = [s for v in results.values() for s in v]
    metrics = {"eval/success_rate": sum(trials) / len(trials), "eval/episodes": len(trials)}
    for task, v in sorted(results.items()):
        metrics[f"eval/success_rate_task{task}"] = sum(v) / len(v)
    return metrics, videos


def _camera_streams(traj: TensorDictBase) -> list[torch.Tensor]:
    """Per camera, the frames seen at each decision step plus the last one (uint8 CHW entries under observation)."""
    streams = []
    obs = traj.get("observation")
    for key in sorted(obs.keys(), key=str):
        v = obs.get(key)
        if isinstance(v, torch.Tensor) and v.dtype == torch.uint8 and v.ndim == 4 and v.shape[1] == 3:
            last = traj.get(("next", "observation", key))[-1:]
            streams.append(torch.cat([v, last], 0))
    return streams
