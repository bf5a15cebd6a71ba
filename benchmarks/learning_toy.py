"""Learning check: RIPT-CFG alone raises a weak policy's success rate on torchrl's ToyVLAEnv.

Task: ToyVLAEnv tracking mode (binary success: `success_steps` consecutive actions
within `success_tol` of a per-episode target that the state exposes), one env
step per chunk of `n_action_steps` actions, at most `max_steps` chunks per
episode, K episodes per target (`group_repeats`, one group_id per target).

Start: a FlowMatchingMLPPolicy behaviour-cloned briefly on *noisy* oracle
actions (target + N(0, bc_noise^2) per action), so it knows roughly where the
target is but is too imprecise to succeed often (about 10-30% success). No
demonstrations are used after that: RIPT-CFG trains only on its own rollouts.

Each iteration runs the shared building blocks of ript.algos.rollout through a
torchrl Collector: collect_informative_groups (leave-one-out advantages,
all-equal groups dropped) -> refill_replay_buffer -> update_policy(RIPTCFGLoss).
The curve is the success rate of the acting policy over the groups completed in
each iteration; the start and end are also measured on held-out targets.

    .venv/bin/python benchmarks/learning_toy.py                  # 3 seeds x 2 modes, plot
    .venv/bin/python benchmarks/learning_toy.py --seeds 0 --modes cfg --iterations 6
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch
from torchrl.collectors import Collector

from ript.algos import (
    FlowMatchingMLPPolicy,
    GroupLOOAdvantage,
    RIPTCFGLoss,
    collect_informative_groups,
    evaluate_success_rate,
    make_replay_buffer,
    make_toy_vla_env,
    refill_replay_buffer,
    update_policy,
)


@dataclasses.dataclass
class ToyConfig:
    """Everything the learning check depends on (defaults: the reported run)."""

    action_dim: int = 2
    success_steps: int = 3
    success_tol: float = 0.25
    chunk_size: int = 4
    n_action_steps: int = 4
    max_steps: int = 3  # decision steps (chunks) per episode
    group_size: int = 8  # K
    num_envs: int = 8
    # behaviour-cloning warm start on noisy oracle actions
    bc_noise: float = 0.45
    bc_steps: int = 300
    bc_batch: int = 256
    bc_lr: float = 3e-3
    # RIPT-CFG
    iterations: int = 12
    target_groups: int = 16
    max_batches: int = 40
    frames_per_batch: int = 64
    epochs: int = 10
    minibatch_size: int = 64
    lr: float = 1e-3
    temperature: float = 1.0
    w_max: float = 20.0
    p_uncond: float = 0.1
    guidance: float = 2.0
    eval_episodes: int = 256
    hidden: int = 128


def make_policy(cfg: ToyConfig) -> FlowMatchingMLPPolicy:
    return FlowMatchingMLPPolicy(
        obs_dim=2 * cfg.action_dim,
        action_dim=cfg.action_dim,
        chunk_size=cfg.chunk_size,
        n_action_steps=cfg.n_action_steps,
        obs_keys=[("observation", "state")],
        hidden=cfg.hidden,
        supports_cfg=True,
        action_low=-1.0,
        action_high=1.0,
    )


def behaviour_clone(policy: FlowMatchingMLPPolicy, cfg: ToyConfig, seed: int) -> None:
    """Warm start: flow matching on noisy oracle chunks (state = [previous action, target])."""
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.bc_lr)
    d = cfg.action_dim
    for _ in range(cfg.bc_steps):
        target = torch.rand(cfg.bc_batch, d, generator=g) - 0.5
        prev = torch.rand(cfg.bc_batch, d, generator=g) * 2 - 1
        prev = torch.where(torch.rand(cfg.bc_batch, 1, generator=g) < 0.3, torch.zeros_like(prev), prev)  # reset states echo zeros
        chunk = target[:, None, :] + cfg.bc_noise * torch.randn(cfg.bc_batch, cfg.chunk_size, d, generator=g)
        td = TensorDict({("observation", "state"): torch.cat([prev, target], -1), "action_chunk": chunk.clamp(-1, 1)}, batch_size=[cfg.bc_batch])
        loss = policy.per_sample_loss(td).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def run(mode: str, seed: int, cfg: ToyConfig, log: bool = True) -> dict:
    """One RIPT-CFG run; returns the per-iteration curve and held-out start/end success rates."""
    torch.manual_seed(seed)
    policy = make_policy(cfg)
    behaviour_clone(policy, cfg, seed)
    env_kw = dict(n_action_steps=cfg.n_action_steps, max_steps=cfg.max_steps, action_dim=cfg.action_dim,
                  state_dim=2 * cfg.action_dim, success_steps=cfg.success_steps, success_tol=cfg.success_tol)
    eval_env = make_toy_vla_env(32, None, seed=50_000 + seed, **env_kw)
    start_eval = evaluate_success_rate(eval_env, policy, episodes=cfg.eval_episodes, max_steps=cfg.max_steps)
    if mode == "cfg":
        policy.default_guidance = cfg.guidance  # act with the guided velocity; identity until labels are learned
    env = make_toy_vla_env(cfg.num_envs, cfg.group_size, seed=seed, **env_kw)
    collector = Collector(env, policy, frames_per_batch=cfg.frames_per_batch, total_frames=-1, auto_register_policy_transforms=False)
    batches = iter(collector)
    advantage = GroupLOOAdvantage(cfg.group_size, exclude_keys=("next", "language_instruction"))
    loss_module = RIPTCFGLoss(policy, mode=mode, temperature=cfg.temperature, w_max=cfg.w_max, p_uncond=cfg.p_uncond)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    buffer = make_replay_buffer(cfg.target_groups * cfg.group_size * cfg.max_steps * 4)
    gen = torch.Generator().manual_seed(seed)
    curve, t0 = [], time.perf_counter()
    for it in range(cfg.iterations):
        data, stats = collect_informative_groups(batches, advantage, target_groups=cfg.target_groups, max_batches=cfg.max_batches)
        curve.append(stats["success_rate"])
        metrics = {}
        if refill_replay_buffer(buffer, data):
            metrics = update_policy(loss_module, buffer, optimizer, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, generator=gen)
        if log:
            print(f"[{mode} seed {seed}] it {it:2d} success {stats['success_rate']:.3f} kept {stats['kept_groups']:2d} "
                  f"dropped {stats['dropped_groups']:2d} steps {stats['kept_steps']:4d} fm {metrics.get('fm_loss_mean', float('nan')):.4f} "
                  f"w[{metrics.get('weight_min', float('nan')):.2f},{metrics.get('weight_max', float('nan')):.2f}] "
                  f"t {time.perf_counter() - t0:.1f}s", flush=True)
    collector.shutdown()
    end_eval = evaluate_success_rate(eval_env, policy, episodes=cfg.eval_episodes, max_steps=cfg.max_steps)
    return {"mode": mode, "seed": seed, "curve": curve, "start_eval": start_eval, "end_eval": end_eval, "time_s": time.perf_counter() - t0}


def passes(result: dict) -> bool:
    """The acceptance rule: end >= 2 x start and end >= start + 0.30 (held-out evaluation)."""
    s, e = result["start_eval"], result["end_eval"]
    return e >= 2 * s and e >= s + 0.30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["weighted", "cfg"], choices=["weighted", "cfg"])
    parser.add_argument("--iterations", type=int, default=ToyConfig.iterations)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/learning_toy"))
    args = parser.parse_args()
    cfg = ToyConfig(iterations=args.iterations)
    torch.set_num_threads(1)
    t0, c0 = time.perf_counter(), time.process_time()
    results = [run(mode, seed, cfg) for mode in args.modes for seed in args.seeds]
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    print("\nmode      seed  start(eval)  end(eval)  curve (collection success per iteration)  pass")
    for r in results:
        curve = " ".join(f"{x:.2f}" for x in r["curve"])
        print(f"{r['mode']:9s} {r['seed']:4d}  {r['start_eval']:10.3f}  {r['end_eval']:9.3f}  {curve}  {passes(r)}")
    print(f"total wall time {total:.0f} s (process CPU time {cpu:.0f} s; the gap is other load on the machine) "
          f"for {len(results)} runs; all pass: {all(passes(r) for r in results)}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps({"config": dataclasses.asdict(cfg), "results": results, "total_s": total, "cpu_s": cpu}, indent=1))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.modes), figsize=(5 * len(args.modes), 3.5), squeeze=False)
    for ax, mode in zip(axes[0], args.modes):
        for r in (r for r in results if r["mode"] == mode):
            ax.plot(range(len(r["curve"])), r["curve"], marker="o", label=f"seed {r['seed']} (eval {r['start_eval']:.2f}->{r['end_eval']:.2f})")
        ax.set(title=f"RIPT-CFG {mode} on ToyVLAEnv", xlabel="iteration", ylabel="success rate", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "learning_toy.png", dpi=100)
    print(f"plot: {args.out / 'learning_toy.png'}")


if __name__ == "__main__":
    main()
