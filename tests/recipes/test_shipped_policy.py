"""The tiny PI0 shipped in configs/pretrained/ is the main job's default: it loads, and it acts on LIBERO."""

from __future__ import annotations

import json

import torch
from tensordict.nn import TensorDictModuleBase
from torchrl.collectors import Collector

import ript.envs  # noqa: F401  (sets MUJOCO_GL before mujoco loads)
from ript.recipes.training.config import CONFIG_DIR, load_config
from ript.recipes.training.factories import make_env, make_policy

SHIPPED = CONFIG_DIR / "pretrained" / "tiny_pi0_libero"


def test_shipped_checkpoint_is_small_and_documents_itself():
    size = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert size < 20 * 2**20, f"{size / 2**20:.1f} MB"
    info = json.loads((SHIPPED / "bc_config.json").read_text())
    assert len(info["tasks"]) >= 3 and len({t.split(":")[0] for t in info["tasks"]}) >= 3  # three suites
    assert info["camera_size"] == load_config("quick_test").env.camera_size
    assert (SHIPPED / "policy_preprocessor.json").is_file() and (SHIPPED / "model.safetensors").is_file()


def test_main_job_default_policy_loads_and_acts_on_libero():
    cfg = load_config("quick_test")
    assert cfg.policy.path is not None and cfg.policy.path.endswith("tiny_pi0_libero")
    policy = make_policy(cfg, torch.device("cpu"))
    norm_std = policy.dataset_stats["action"]["std"]
    assert not torch.allclose(norm_std, torch.ones_like(norm_std))  # the demos' statistics, not identity
    env = make_env(cfg, policy, num_envs=1)
    try:
        env.push_contexts([{"init_state_id": 0}])
        td = env.reset()
        assert td["task"] == "pick up the cream cheese and place it in the basket"
        with torch.no_grad():
            td = policy(td)
        chunk = td["action"]
        assert chunk.shape == (cfg.policy.n_action_steps, 32) and torch.isfinite(chunk).all()
        out = env.step(td)
        assert int(out["next", "steps_executed"]) == cfg.policy.n_action_steps
        # the arm moved: the policy's (unnormalised) actions reached the simulator
        assert not torch.allclose(out["next", "observation", "state"], td["observation", "state"])
    finally:
        env.close()


class _RecordingActor(TensorDictModuleBase):
    """Acts through the actor's own `act`, with seeded noise that it stores beside the chunk (so each step can be replayed)."""

    def __init__(self, actor) -> None:
        super().__init__()
        self.actor = actor
        self.in_keys, self.out_keys = actor.in_keys, ["action_chunk", "action", "replay_noise"]
        self.gen = torch.Generator().manual_seed(0)

    def forward(self, td):
        noise = torch.randn(*td.batch_size, self.actor.chunk_size, self.actor.action_dim, generator=self.gen)
        return self.actor.act(td, noise=noise).set("replay_noise", noise)


def test_collected_steps_hold_what_the_policy_saw():
    """Each stored decision step pairs the chunk with the observation it was sampled from (no off-by-one).

    Replays every stored step: the actor, given the stored observation and the same noise, must
    sample the stored chunk; and the step's next observation must be the following step's observation.
    """
    cfg = load_config("quick_test")
    policy = make_policy(cfg, torch.device("cpu"))
    env = make_env(cfg, policy)
    recorder = _RecordingActor(policy)
    try:
        env.push_contexts([{"init_state_id": i} for i in range(env.batch_size[0])])
        collector = Collector(env, recorder, frames_per_batch=3 * env.batch_size[0], total_frames=-1,
                              auto_register_policy_transforms=False)
        batch = next(iter(collector))
        collector.shutdown()
    finally:
        if not env.is_closed:
            env.close()
    batch = batch.reshape(env.batch_size[0], -1)
    state = batch["observation", "state"]
    assert torch.equal(batch["next", "observation", "state"][:, :-1], state[:, 1:])
    assert torch.equal(batch["next", "observation", "image"][:, :-1], batch["observation", "image"][:, 1:])
    flat = batch.reshape(-1)
    replay = policy.act(flat.exclude("action_chunk", "action"), noise=flat["replay_noise"])["action_chunk"]
    torch.testing.assert_close(replay, flat["action_chunk"], atol=1e-4, rtol=1e-4)
    assert torch.equal(flat["action"], flat["action_chunk"][:, : policy.n_action_steps])
