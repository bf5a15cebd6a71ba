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

`--policy pi0` runs the same check with a randomly initialised tiny lerobot PI0
(`PI0Actor.tiny`, about 0.36M parameters, CFG head included) instead of the MLP.
ToyVLAEnv's observation is given PI0's input schema (as the LIBERO transforms do
for the simulator) by the env's own options and two small transforms:

- ("observation", "image"): ToyVLAEnv's uint8 [3, 16, 16] noise image as is; the
  tiny vision tower is built for 16 px with patch 8 (4 image tokens), so lerobot
  does not resize it. ToyVLAEnv has no wrist camera: ("observation", "wrist_image")
  stays absent and lerobot's PI0 fills that camera with a masked blank image (its
  own path for absent cameras);
- ("observation", "state"): built 32 wide by ToyVLAEnv (state_dim=32: [previous
  action, target] then zeros), i.e. zero-padded to PI0's max_state_dim;
- ToyPI0Language: "language_instruction" -> ("observation", "language_tokens" /
  "language_attention_mask") with the actor's offline tokenizer (tensors, so the
  replay buffer keeps them for the loss);
- ToyPI0Action (inverse): PI0's padded action [n_action_steps, 32] -> its first
  action_dim dims, clipped to [-1, 1].

The warm start is the same flow-matching BC on noisy oracle chunks, through
`PI0Actor.per_sample_loss`; `pi0_config` changes only what the transformer needs
(bc_noise 0.6 and 150 BC steps land near the MLP's ~10% start; lower learning
rates; 4 epochs per iteration). Everything else (env, groups, loss) is shared.

    .venv/bin/python benchmarks/learning_toy.py                  # 3 seeds x 2 modes, plot
    .venv/bin/python benchmarks/learning_toy.py --seeds 0 --modes cfg --iterations 6
    .venv/bin/python benchmarks/learning_toy.py --policy pi0 --seeds 0 --modes weighted --iterations 10
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tensordict import NonTensorData, NonTensorStack, TensorDict, TensorDictBase
from torchrl.collectors import Collector
from torchrl.data import Categorical, Composite, Unbounded
from torchrl.envs import EnvBase, TransformedEnv
from torchrl.envs.custom import ToyVLAEnv
from torchrl.envs.transforms import Compose, Transform

from ript.algos import (
    FlowMatchingMLPPolicy,
    FlowMatchingPolicy,
    GroupLOOAdvantage,
    RIPTCFGLoss,
    collect_informative_groups,
    evaluate_success_rate,
    make_replay_buffer,
    make_toy_vla_env,
    refill_replay_buffer,
    update_policy,
)

if TYPE_CHECKING:
    from ript.algos import PI0Actor  # imported lazily: lerobot loads only for --policy pi0


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
    grad_accum_steps: int = 1  # minibatches per optimizer step (the effective batch: minibatch_size x this)
    lr: float = 1e-3
    temperature: float = 1.0
    w_max: float = 20.0
    p_uncond: float = 0.1
    guidance: float = 2.0
    keep_uniform: bool = False  # keep groups whose K outcomes agree (advantage 0) instead of dropping them
    anchor: float = 0.0  # RIPTCFGLoss anchor_coef: pull towards the BC start's samples (a frozen copy)
    eval_episodes: int = 256
    hidden: int = 128
    # policy: "mlp" (FlowMatchingMLPPolicy) or "pi0" (tiny lerobot PI0, see pi0_config)
    policy: str = "mlp"
    patch_size: int = 8  # pi0: the vision tower reads ToyVLAEnv's 16x16 image as 4 patches


def cfg_state_dim(cfg: ToyConfig) -> int:
    """ToyVLAEnv's state width: [previous action, target] for the MLP; zero-padded to PI0's max_state_dim (32) for PI0."""
    return 2 * cfg.action_dim if cfg.policy == "mlp" else 32


def pi0_config(**overrides) -> ToyConfig:
    """The tiny-PI0 variant of the check: same env, groups and loss; optimiser settings for a transformer."""
    defaults = dict(policy="pi0", bc_noise=0.6, bc_steps=150, bc_batch=128, bc_lr=1e-3, lr=3e-4, epochs=4)
    return ToyConfig(**{**defaults, **overrides})


# -- ToyVLAEnv -> PI0Actor inputs (pi0 only) --------------------------------------------
_TOY_DEFAULTS = inspect.signature(ToyVLAEnv.__init__).parameters  # make_toy_vla_env keeps ToyVLAEnv's instruction and image shape
TOY_INSTRUCTION, TOY_IMAGE_SHAPE = _TOY_DEFAULTS["instruction"].default, _TOY_DEFAULTS["image_shape"].default
IMAGE, STATE, INSTRUCTION = ("observation", "image"), ("observation", "state"), "language_instruction"
LANG_TOKENS, LANG_MASK = ("observation", "language_tokens"), ("observation", "language_attention_mask")


def _instructions(value: object, n: int) -> list[str]:
    """n instruction strings from a NonTensor entry (a str, NonTensorData or a nested NonTensorStack)."""
    if isinstance(value, (NonTensorData, NonTensorStack)):
        value = value.tolist()
    if isinstance(value, str):
        return [value] * n
    flat: list = list(value)
    while flat and isinstance(flat[0], list):
        flat = [x for sub in flat for x in sub]
    if len(flat) != n:
        raise ValueError(f"expected {n} instructions, got {len(flat)}")
    return flat


class ToyPI0Language(Transform):
    """"language_instruction" (NonTensor) -> PI0's language tokens and mask, with the actor's offline tokenizer.

    New keys only: a transform that reshapes an existing entry (e.g. a resized image) breaks
    SerialEnv's partial steps, which write raw results into the transformed tensordict.
    """

    def __init__(self, actor: PI0Actor) -> None:
        super().__init__(in_keys=[INSTRUCTION], out_keys=[LANG_TOKENS, LANG_MASK])
        self.tokenize = actor.tokenize  # cached per instruction
        self.max_length = int(actor.policy.config.tokenizer_max_length)

    def _call(self, td: TensorDictBase) -> TensorDictBase:
        tokens, mask = self.tokenize(_instructions(td.get(INSTRUCTION), td.batch_size.numel()))
        td.set(LANG_TOKENS, tokens.reshape(*td.batch_size, -1))
        td.set(LANG_MASK, mask.reshape(*td.batch_size, -1))
        return td

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:  # plain tensordicts (BC batches)
        return self._call(tensordict)

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        shape = (*observation_spec.shape, self.max_length)
        observation_spec[LANG_TOKENS] = Unbounded(shape=shape, dtype=torch.int64, device=observation_spec.device)
        observation_spec[LANG_MASK] = Categorical(2, shape=shape, dtype=torch.bool, device=observation_spec.device)
        return observation_spec


class ToyPI0Action(Transform):
    """Inverse: PI0's padded action [..., max_action_dim] -> the env's first `action_dim` dims, clipped to [-1, 1]."""

    def __init__(self, action_dim: int, pad_to: int) -> None:
        super().__init__(in_keys=[], out_keys=[], in_keys_inv=["action"], out_keys_inv=["action"])
        self.action_dim, self.pad_to = int(action_dim), int(pad_to)

    def _inv_apply_transform(self, action: torch.Tensor) -> torch.Tensor:
        if action.shape[-1] != self.pad_to:
            raise ValueError(f"ToyPI0Action expects padded actions [..., {self.pad_to}], got {tuple(action.shape)}")
        return action[..., : self.action_dim].clamp(-1.0, 1.0)

    def transform_input_spec(self, input_spec: Composite) -> Composite:
        input_spec = input_spec.clone()
        inner = input_spec["full_action_spec", "action"]
        input_spec["full_action_spec", "action"] = Unbounded(shape=(*inner.shape[:-1], self.pad_to), dtype=torch.float32, device=inner.device)
        return input_spec


def adapt_env(env: EnvBase, policy: FlowMatchingPolicy, cfg: ToyConfig) -> EnvBase:
    """The MLP reads ToyVLAEnv as is; the PI0 actor gets its input schema through the transforms above."""
    if cfg.policy == "mlp":
        return env
    return TransformedEnv(env, Compose(ToyPI0Language(policy), ToyPI0Action(cfg.action_dim, policy.action_dim)))


def make_policy(cfg: ToyConfig, seed: int = 0) -> FlowMatchingPolicy:
    if cfg.policy == "pi0":
        from ript.algos import PI0Actor
        from ript.algos.tiny_pi0 import TinyPI0Spec

        return PI0Actor.tiny(
            TinyPI0Spec(patch_size=cfg.patch_size), chunk_size=cfg.chunk_size, n_action_steps=cfg.n_action_steps,
            image_size=TOY_IMAGE_SHAPE[-1], action_dim=cfg.action_dim, state_dim=2 * cfg.action_dim, supports_cfg=True, seed=seed,
        )
    if cfg.policy != "mlp":
        raise ValueError(f"policy must be 'mlp' or 'pi0', got {cfg.policy!r}")
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


def behaviour_clone(policy: FlowMatchingPolicy, cfg: ToyConfig, seed: int) -> None:
    """Warm start: flow matching on noisy oracle chunks (state = [previous action, target])."""
    to_pi0 = ToyPI0Language(policy) if cfg.policy == "pi0" else None
    g = torch.Generator().manual_seed(10_000 + seed)
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.bc_lr)
    d = cfg.action_dim
    for _ in range(cfg.bc_steps):
        target = torch.rand(cfg.bc_batch, d, generator=g) - 0.5
        prev = torch.rand(cfg.bc_batch, d, generator=g) * 2 - 1
        prev = torch.where(torch.rand(cfg.bc_batch, 1, generator=g) < 0.3, torch.zeros_like(prev), prev)  # reset states echo zeros
        chunk = target[:, None, :] + cfg.bc_noise * torch.randn(cfg.bc_batch, cfg.chunk_size, d, generator=g)
        td = TensorDict({("observation", "state"): torch.cat([prev, target], -1), "action_chunk": chunk.clamp(-1, 1)}, batch_size=[cfg.bc_batch])
        if to_pi0 is not None:  # the env's observation as PI0 sees it (noise image, zero-padded state, tokens)
            td.set(STATE, F.pad(td.get(STATE), (0, cfg_state_dim(cfg) - 2 * d)))
            td.set(IMAGE, torch.randint(0, 256, (cfg.bc_batch, *TOY_IMAGE_SHAPE), dtype=torch.uint8, generator=g))
            td.set_non_tensor(INSTRUCTION, TOY_INSTRUCTION)
            td = to_pi0(td)
        loss = policy.per_sample_loss(td).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def run(mode: str, seed: int, cfg: ToyConfig, log: bool = True) -> dict:
    """One RIPT-CFG run; returns the per-iteration curve and held-out start/end success rates."""
    torch.manual_seed(seed)
    policy = make_policy(cfg, seed)
    behaviour_clone(policy, cfg, seed)
    env_kw = dict(n_action_steps=cfg.n_action_steps, max_steps=cfg.max_steps, action_dim=cfg.action_dim,
                  state_dim=cfg_state_dim(cfg), success_steps=cfg.success_steps, success_tol=cfg.success_tol)
    eval_env = adapt_env(make_toy_vla_env(32, None, seed=50_000 + seed, **env_kw), policy, cfg)
    start_eval = evaluate_success_rate(eval_env, policy, episodes=cfg.eval_episodes, max_steps=cfg.max_steps)
    if mode == "cfg":
        policy.default_guidance = cfg.guidance  # act with the guided velocity; identity until labels are learned
    env = adapt_env(make_toy_vla_env(cfg.num_envs, cfg.group_size, seed=seed, **env_kw), policy, cfg)
    collector = Collector(env, policy, frames_per_batch=cfg.frames_per_batch, total_frames=-1, auto_register_policy_transforms=False)
    batches = iter(collector)
    advantage = GroupLOOAdvantage(cfg.group_size, exclude_keys=("next", "language_instruction"), drop_uninformative=not cfg.keep_uniform)
    reference = copy.deepcopy(policy) if cfg.anchor > 0 else None
    loss_module = RIPTCFGLoss(policy, mode=mode, temperature=cfg.temperature, w_max=cfg.w_max, p_uncond=cfg.p_uncond,
                              reference=reference, anchor_coef=cfg.anchor)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    buffer = make_replay_buffer(cfg.target_groups * cfg.group_size * cfg.max_steps * 4)
    gen = torch.Generator().manual_seed(seed)
    curve, t0 = [], time.perf_counter()
    for it in range(cfg.iterations):
        data, stats = collect_informative_groups(batches, advantage, target_groups=cfg.target_groups, max_batches=cfg.max_batches)
        if data is not None and cfg.keep_uniform:  # the ablation trains on uniform groups as on any (advantage 0), not anchor-only
            data = data.exclude("informative")
        curve.append(stats["success_rate"])
        metrics = {}
        if refill_replay_buffer(buffer, data):
            metrics = update_policy(loss_module, buffer, optimizer, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size, grad_accum_steps=cfg.grad_accum_steps, generator=gen)
        if log:
            print(f"[{mode} seed {seed}] it {it:2d} success {stats['success_rate']:.3f} kept {stats['kept_groups']:2d} "
                  f"dropped {stats['dropped_groups']:2d} steps {stats['kept_steps']:4d} fm {metrics.get('fm_loss_mean', float('nan')):.4f} "
                  f"w[{metrics.get('weight_min', float('nan')):.2f},{metrics.get('weight_max', float('nan')):.2f}] "
                  f"t {time.perf_counter() - t0:.1f}s", flush=True)
    collector.shutdown()
    end_eval = evaluate_success_rate(eval_env, policy, episodes=cfg.eval_episodes, max_steps=cfg.max_steps)
    return {"policy": cfg.policy, "mode": mode, "seed": seed, "curve": curve, "start_eval": start_eval, "end_eval": end_eval, "time_s": time.perf_counter() - t0}


def passes(result: dict) -> bool:
    """The acceptance rule: end >= 2 x start and end >= start + 0.30 (held-out evaluation)."""
    s, e = result["start_eval"], result["end_eval"]
    return e >= 2 * s and e >= s + 0.30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--modes", nargs="+", default=["weighted", "cfg"], choices=["weighted", "cfg"])
    parser.add_argument("--policy", default="mlp", choices=["mlp", "pi0"], help="mlp: FlowMatchingMLPPolicy; pi0: tiny lerobot PI0 (PI0Actor.tiny)")
    parser.add_argument("--iterations", type=int, default=ToyConfig.iterations)
    parser.add_argument("--lr", type=float, default=None, help="RIPT learning rate (default: the policy's setting)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per iteration (default: the policy's setting)")
    parser.add_argument("--temperature", type=float, default=None, help="AWR temperature (weighted mode)")
    parser.add_argument("--keep-uniform", action="store_true", default=None, help="keep all-success / all-failure groups (no dynamic sampling)")
    parser.add_argument("--anchor", type=float, default=None, help="anchor_coef towards the BC start (frozen copy)")
    parser.add_argument("--minibatch-size", type=int, default=None, help="samples per forward/backward (default 64)")
    parser.add_argument("--grad-accum-steps", type=int, default=None, help="minibatches accumulated per optimizer step (default 1)")
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/out/learning_toy (mlp) or benchmarks/out/learning_toy_pi0")
    args = parser.parse_args()
    overrides = {k: v for k, v in dict(iterations=args.iterations, lr=args.lr,
                                       epochs=args.epochs, temperature=args.temperature,
                                       keep_uniform=args.keep_uniform, anchor=args.anchor,
                                       minibatch_size=args.minibatch_size, grad_accum_steps=args.grad_accum_steps).items() if v is not None}
    cfg = ToyConfig(**overrides) if args.policy == "mlp" else pi0_config(**overrides)
    if args.out is None:
        args.out = Path("benchmarks/out/learning_toy" if args.policy == "mlp" else "benchmarks/out/learning_toy_pi0")
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
        ax.set(title=f"RIPT-CFG {mode}, {'tiny PI0' if args.policy == 'pi0' else 'MLP'} on ToyVLAEnv", xlabel="iteration", ylabel="success rate", ylim=(0, 1))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out / "learning_toy.png", dpi=100)
    print(f"plot: {args.out / 'learning_toy.png'}")


if __name__ == "__main__":
    main()
