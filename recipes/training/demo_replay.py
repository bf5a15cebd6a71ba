"""Expert demos replayed beside the policy's own kept steps (RLPD-style symmetric sampling).

Why: with few informative groups per iteration, an update on them alone drifts
away from the behaviour the policy was cloned on. Replaying demos of that
behaviour (advantage +1, a sure success) holds it there. Only demos of
(task, init state) pairs the checkpoint was cloned on are drawn: demos of other
states would be new supervision, and a gain could not be told apart from more
behaviour cloning.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDict

from .config import ConfigError, RIPTConfig, resolve_repo_path, task_specs


def replay_init_states(train_states: list[int], dataset_states: set[int], cloned: dict[str, list[int]]) -> list[int]:
    """Training init states the dataset holds demos of and some task of the run was cloned on."""
    allowed = {s for states in cloned.values() for s in states}
    return [s for s in train_states if s in dataset_states and s in allowed]


@dataclass(frozen=True)
class ReplayPlan:
    """Where the demos come from and which of them a run may draw."""

    dataset: str
    bc_config: dict[str, Any]
    cloned: dict[str, list[int]]  # this run's tasks ("suite:id") -> init states the checkpoint was cloned on
    init_states: list[int]  # training init states with demos to draw


def plan_demo_replay(cfg: RIPTConfig) -> ReplayPlan:
    """Check the checkpoint and dataset before any work (preflight); ConfigError names the fix."""
    from ript.recipes.bc_pretrain import BCConfig, demo_info  # LeRobotDataset tooling, loaded only for replay

    info_path = Path(str(cfg.policy.path)) / "bc_config.json"
    if not info_path.is_file():
        raise ConfigError(f"algo.demo_replay needs {info_path} (a checkpoint cloned by recipes/bc_pretrain.py): set algo.demo_replay=0")
    bc = json.loads(info_path.read_text())
    dataset = str(resolve_repo_path(cfg.algo.demo_dataset or bc["config"]["dataset"]))
    if not (Path(dataset) / "meta").is_dir():
        raise ConfigError(f"algo.demo_replay: no LeRobotDataset at {dataset}: write it with recipes/collect_demos.py "
                          "or set algo.demo_dataset=<its dir> (or algo.demo_replay=0)")
    labels = [f"{s.suite}:{s.task_id}" for s in task_specs(cfg)]
    cloned_all = bc.get("cloned_init_states") or {t: bc["config"]["demo_init_states"] for t in bc["tasks"]}
    cloned = {t: list(v) for t, v in cloned_all.items() if t in labels}  # this run's tasks only
    held = {int(ep["init_state_id"]) for ep in demo_info(BCConfig(dataset=dataset))["episodes"]}
    states = replay_init_states(list(cfg.env.train_init_states), held, cloned)
    if not states:
        raise ConfigError(f"algo.demo_replay: {dataset} holds no demo of a training init state the checkpoint was cloned on "
                          "for env.tasks: collect them with recipes/collect_demos.py or set algo.demo_replay=0")
    return ReplayPlan(dataset, bc["config"], cloned, states)


class DemoReplay:
    """Draws `algo.demo_replay` demos per task of cloned training init states each iteration, shaped like kept rollout steps."""

    def __init__(self, cfg: RIPTConfig, policy: Any, norm: Any) -> None:
        self.plan = plan_demo_replay(cfg)
        self.per_task, self.seed = int(cfg.algo.demo_replay), int(cfg.train.seed)
        self.policy, self.norm = policy, norm

    def draw(self, iteration: int) -> TensorDict:
        """This iteration's demos (a pure function of seed and iteration, so a resumed run draws the same)."""
        from ript.recipes.bc_pretrain import BCConfig, load_demos

        gen = torch.Generator().manual_seed(zlib.crc32(f"demo-replay/{self.seed}/{iteration}".encode()))
        plan = self.plan
        picks = torch.randperm(len(plan.init_states), generator=gen)[: self.per_task]
        states = sorted(plan.init_states[int(i)] for i in picks)
        demos, _, _ = load_demos(BCConfig(dataset=plan.dataset, repo_id=plan.bc_config["repo_id"], demo_init_states=states,
                                          chunk_size=self.policy.chunk_size), self.policy,
                                 stride=int(plan.bc_config["n_action_steps"]), norm=self.norm, allowed=plan.cloned)
        n = demos.shape[0]
        demos.set("advantage", torch.ones(n, 1))
        demos.set("episode_return", torch.ones(n, 1))
        demos.set("informative", torch.ones(n, 1, dtype=torch.bool))
        return demos
