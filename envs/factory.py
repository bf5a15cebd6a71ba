"""`make_libero_env`: one LIBERO env, or N workers (ParallelEnv/SerialEnv), optionally transformed.

Reuse it from any TorchRL algorithm:

    env = make_libero_env("libero_object", task=[0, 1], num_envs=2, action_chunk=5,
                          camera_size=128, transforms=[...])
    collector = torchrl.collectors.Collector(env, policy, frames_per_batch=..., total_frames=...)
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from torchrl.envs import Compose, EnvBase, ParallelEnv, SerialEnv, Transform, TransformedEnv

from ript.envs.libero_env import LiberoEnv

# Workers' default group ids live in disjoint ranges so groups never collide across workers.
GROUP_ID_STRIDE = 1_000_000


def make_libero_env(
    suite: str,
    task: int | str | Sequence[int | str] = 0,
    *,
    num_envs: int = 1,
    parallel: bool = True,
    transforms: Sequence[Transform] | None = None,
    seed: int | None = None,
    suites: Sequence[str] | None = None,
    **env_kwargs: Any,
) -> EnvBase:
    """Build LIBERO env(s) for `suite`; `task` is one task (id or name) or one per worker.

    num_envs=1 gives a `LiberoEnv`; num_envs>1 a `ParallelEnv` (one process per
    simulation, built inside the workers) or, with parallel=False, a `SerialEnv`.
    Worker i gets `worker_index=i` (queue its contexts with `ript.envs.push_contexts(env, ctxs, worker=i)`)
    and default group ids offset by i * 1e6. `suites` (one per worker) overrides `suite`
    per worker, for multi-task runs across suites. `transforms` wrap the result in
    `TransformedEnv(env, Compose(*transforms))`. `env_kwargs` go to `LiberoEnv`
    (e.g. `fixture_placement`); `scene_seed` defaults to `seed` in every worker,
    so a pinned context is one scene whichever worker runs it.
    """
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    tasks = list(task) if isinstance(task, (list, tuple)) else [task] * num_envs
    if len(tasks) != num_envs:
        raise ValueError(f"got {len(tasks)} tasks for num_envs={num_envs}: pass one task or one per worker")
    worker_suites = list(suites) if suites is not None else [suite] * num_envs
    if len(worker_suites) != num_envs:
        raise ValueError(f"got {len(worker_suites)} suites for num_envs={num_envs}: pass one suite per worker")
    for bad in ("worker_index", "group_id_offset"):
        if bad in env_kwargs and num_envs > 1:
            raise ValueError(f"{bad} is set per worker by make_libero_env: leave it out when num_envs > 1")
    if seed is not None:
        env_kwargs.setdefault("scene_seed", seed)  # set_seed below gives worker i seed + i: the scene must not follow
    if num_envs == 1:
        env: EnvBase = LiberoEnv(worker_suites[0], tasks[0], **env_kwargs)
    else:
        fns = [
            partial(LiberoEnv, s, t, worker_index=i, group_id_offset=i * GROUP_ID_STRIDE, **env_kwargs)
            for i, (s, t) in enumerate(zip(worker_suites, tasks))
        ]
        if parallel:  # metadata from the workers: no throw-away simulator in the parent process
            env = ParallelEnv(num_envs, fns, metadata_from_workers=True)
        else:
            env = SerialEnv(num_envs, fns)
    if seed is not None:
        env.set_seed(seed)
    if transforms:
        env = TransformedEnv(env, Compose(*transforms))
    return env


def push_contexts(env: EnvBase, contexts: Sequence[dict[str, int]], worker: int | None = None) -> list[int]:
    """Queue RIPT contexts for the next resets of worker `worker` (all workers if None).

    Works on a LiberoEnv, a Parallel/SerialEnv of them and TransformedEnv wrappers;
    returns each worker's queue length. A bad context (e.g. init_state_id out of
    range) raises ValueError here, in the caller.
    """
    out = env.push_contexts(list(contexts), worker, raise_errors=False)
    results = out if isinstance(out, list) else [out]
    errors = [r for r in results if isinstance(r, str)]
    if errors:
        raise ValueError(errors[0])
    return results
