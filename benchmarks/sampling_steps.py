"""How far few-step sampling is from the flow the policy learned: spread and shift of its action chunks.

RIPT-CFG fits the policy to chunks it sampled with `num_inference_steps` Euler steps, and its
anchor fits the reference's chunks sampled the same way. If few-step chunks are narrower than
what the velocity field integrates to with many steps, every update trains towards a narrower
distribution, and sampling it with few steps narrows it again. This prints, on the held-out
start observations of each task (LIBERO init states 40+), for each step count against a
many-step baseline computed in the same process with the same noise: the ratio of the spread
(std over samples, averaged over dims and chunk positions), the mean shift and the mean
absolute difference, both as fractions of the baseline's spread.

    .venv/bin/python benchmarks/sampling_steps.py [steps=[5,10]] [init_states=[40,41]] [samples=32] [--dry-run]
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import ript.envs  # noqa: F401  (MUJOCO_GL before mujoco loads)
from ript.algos.pi0_actor import PI0Actor
from ript.envs import NormStats, push_contexts
from ript.envs import keys as K
from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError, resolve_repo_path
from ript.recipes.training.multitask import TaskWorkers, read_bc_config


@dataclass
class StepsConfig:
    checkpoint: str = "configs/pretrained/tiny_pi0_libero"  # written by recipes/bc_pretrain.py (with bc_config.json)
    init_states: list[int] = field(default_factory=lambda: list(range(40, 46)))  # one start observation per task and init state
    samples: int = 32  # chunks per observation
    steps: list[int] = field(default_factory=lambda: [5, 10])  # Euler step counts compared with the baseline
    baseline_steps: int = 50
    seed: int = 0


def _open_checkpoint(cfg: StepsConfig) -> tuple[Path, dict]:
    path = Path(resolve_repo_path(cfg.checkpoint))
    try:
        return path, read_bc_config(path)
    except FileNotFoundError as err:
        raise ConfigError(str(err)) from err


def validate(cfg: StepsConfig) -> None:
    """Counts and the checkpoint, before any LIBERO worker starts; raises ConfigError (one line)."""
    if cfg.samples < 2 or min(cfg.steps + [cfg.baseline_steps]) < 1:
        raise ConfigError("samples must be >= 2 and every step count >= 1")
    _open_checkpoint(cfg)


def compare(cfg: StepsConfig) -> dict[str, dict[str, float]]:
    """Sample each step count and the baseline from the same noise; print and return the ratios."""
    ckpt, bc = _open_checkpoint(cfg)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(2)
    actor = PI0Actor.from_pretrained(ckpt, device="cpu")
    actor.eval()
    workers = TaskWorkers(actor, NormStats.from_lerobot_checkpoint(ckpt), bc["tasks"], int(bc["camera_size"]), seed=cfg.seed)
    try:
        obs = []
        for init in cfg.init_states:  # one start observation per task and init state
            for w in range(len(bc["tasks"])):
                push_contexts(workers.env, [{K.INIT_STATE_ID: init, K.GROUP_ID: 1}], worker=w)
            obs.append(workers.env.reset().select("observation").clone())
    finally:
        workers.close()
    obs = torch.stack(obs, 0).reshape(-1)
    batch = obs.unsqueeze(1).expand(obs.shape[0], cfg.samples).reshape(-1).clone()
    config = actor.policy.config
    noise = torch.randn(batch.shape[0], config.chunk_size, config.max_action_dim)
    dims = actor.padded_from or config.max_action_dim

    def sample(steps: int) -> torch.Tensor:
        config.num_inference_steps = steps
        with torch.no_grad():
            return actor.sample_actions(batch, noise=noise.clone())[..., :dims].reshape(obs.shape[0], cfg.samples, -1, dims)

    base = sample(cfg.baseline_steps)
    spread = base.std(1).mean()
    out = {}
    for steps in cfg.steps:
        chunks = sample(steps)
        diff = chunks - base
        out[str(steps)] = {"spread_ratio": float(chunks.std(1).mean() / spread),
                           "mean_shift": float(diff.mean(1).abs().mean() / spread),
                           "abs_diff": float(diff.abs().mean() / spread)}
        print(f"{steps:3d} steps vs {cfg.baseline_steps}: spread x{out[str(steps)]['spread_ratio']:.3f}, "
              f"mean shift {out[str(steps)]['mean_shift']:.3f} and |diff| {out[str(steps)]['abs_diff']:.3f} of the spread "
              f"({obs.shape[0]} observations x {cfg.samples} samples)")
    return out


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]] | None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    return run_cli(StepsConfig, compare, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
