"""What one RIPT-CFG update does to the policy, measured offline on one iteration's LIBERO rollouts.

A held-out success rate costs about 25 CPU minutes per policy; this costs about a minute per
update setting. It collects one iteration of groups from the checkpoint (or loads one saved
earlier with --data), then, for each --variants setting, applies one update to a fresh copy
of the checkpoint and prints, as ratios against the start policy in the same process and with
the same flow-matching noise and times:

- `held`: the flow-matching loss on expert demos of held-out init states (40+), per task: how
  far the update moves the policy away from behaviour that succeeds (> 1: away);
- `own+` / `own-`: the loss on the iteration's own chunks from successful / failed rollouts;
- `gap`: (own- change) - (own+ change), in loss units: > 0 means successes became likelier
  relative to failures, the improvement the update is for.

Measured with the shipped checkpoint on learning_libero's iteration 1 (seed 0): at lr 1e-4
(2 epochs, T 0.5, w_max 10) the loss rose on the update's own training chunks (own+ x1.009,
own- x1.027) and on held-out demos (x1.085): fresh-Adam steps on a noisy flow-matching
gradient were mostly noise, the policy moved without learning. At lr 1e-5 both fell and
held-out demos stayed within 1% (this script's draft, other noise draws).

    .venv/bin/python benchmarks/update_drift.py --dataset data/scripted_libero \
        --variants lr=1e-4,epochs=2 lr=1e-5,epochs=4,temperature=0.25,w_max=20
"""

from __future__ import annotations

import copy
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tensordict import TensorDict, TensorDictBase

import ript.envs  # noqa: F401  (MUJOCO_GL before mujoco loads)
from ript.algos import GroupLOOAdvantage, RIPTCFGLoss
from ript.algos.pi0_actor import PI0Actor
from ript.algos.policy import evaluating
from ript.algos.rollout import make_replay_buffer, refill_replay_buffer, update_policy
from ript.envs import NormStats
from ript.recipes.common.cli import dataclass_parser
from ript.recipes.common.config import resolve_repo_path
from ript.recipes.common.factories import stored_keys
from ript.recipes.collect_demos import EPISODES_FILE
from ript.recipes.common.multitask import TaskWorkers, draw_group_starts, open_bc_checkpoint

# what a variant may set, with the type it is parsed to
VARIANT_KEYS = {"lr": float, "epochs": int, "minibatch_size": int, "temperature": float, "w_max": float, "anchor": float}
DEFAULTS = {"epochs": 1, "minibatch_size": 32, "temperature": 1.0, "w_max": 5.0, "anchor": 0.0}


@dataclass
class DriftConfig:
    checkpoint: str = "configs/pretrained/tiny_pi0_libero"
    dataset: str = "data/scripted_libero"  # the demos (collect_demos.py); held-out episodes give the `held` loss
    out: str = "runs/update_drift"
    data: str = ""  # an iteration.pt this script saved earlier: skip the collection
    variants: list[str] = field(default_factory=lambda: ["lr=1e-4,epochs=2", "lr=1e-5,epochs=4,temperature=0.25,w_max=20"])
    train_init_states: list[int] = field(default_factory=lambda: list(range(40)))  # the groups' init states (learning_libero's)
    eval_init_states: list[int] = field(default_factory=lambda: list(range(40, 50)))
    groups_per_task: int = 4
    group_size: int = 4
    frames: int = 600  # frames per measured set (held-out demos, own chunks)
    draws: int = 2  # noise/time draws per frame
    seed: int = 0


def parse_variant(spec: str) -> dict[str, Any]:
    """'lr=1e-5,epochs=4' -> {'lr': 1e-05, 'epochs': 4, ...defaults}; a bad key or value raises ValueError."""
    out = dict(DEFAULTS)
    for item in filter(None, spec.split(",")):
        key, _, value = item.partition("=")
        if key not in VARIANT_KEYS or not value:
            raise ValueError(f"variant {spec!r}: {item!r} is not key=value with a key in {sorted(VARIANT_KEYS)}")
        try:
            out[key] = VARIANT_KEYS[key](value)
        except ValueError:
            raise ValueError(f"variant {spec!r}: {key}={value!r} is not a {VARIANT_KEYS[key].__name__}") from None
    if "lr" not in out:
        raise ValueError(f"variant {spec!r}: set lr (e.g. lr=1e-5)")
    return out


def collect_iteration(actor: PI0Actor, ckpt: Path, bc: dict[str, Any], cfg: DriftConfig) -> TensorDictBase:
    """One learning_libero iteration's rollouts (same init-state draws for a seed), every group kept and flagged."""
    runner = TaskWorkers(actor, NormStats.from_lerobot_checkpoint(ckpt), bc["tasks"], int(bc["camera_size"]), seed=cfg.seed)
    advantage = GroupLOOAdvantage(cfg.group_size, drop_uninformative=False)
    kept: list[TensorDictBase] = []
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    picks = draw_group_starts(cfg.train_init_states, cfg.groups_per_task, len(bc["tasks"]), rng)
    try:
        with evaluating(actor):
            runner.run(picks, cfg.group_size, on_batch=lambda b: kept.append(r) if (r := advantage(b)) is not None else None)
    finally:
        runner.close()
    data = torch.cat(kept, 0)
    return data.select(*stored_keys(actor, data), strict=False)


def draws(n: int, shape: tuple[int, int], count: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Fixed flow-matching (noise, time) pairs from lerobot's distributions: every policy is measured on the same ones."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
        return [(torch.randn(n, *shape), beta.sample((n,)) * 0.999 + 0.001) for _ in range(count)]


def mean_losses(actor: PI0Actor, td: TensorDictBase, nt: list, groups: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-group mean flow-matching loss of `actor` on `td` under the fixed draws (eval mode)."""
    per = []
    with evaluating(actor):
        for noise, time_ in nt:
            per.append(torch.cat([actor.per_sample_loss(td[i:i + 128], noise=noise[i:i + 128],
                                                        time=time_[i:i + 128]) for i in range(0, td.shape[0], 128)]))
    loss = torch.stack(per).mean(0)
    return {name: float(loss[mask].mean()) for name, mask in groups.items() if mask.any()}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = dataclass_parser(DriftConfig, __doc__.splitlines()[0])
    cfg = DriftConfig(**vars(parser.parse_args(argv)))
    try:
        variants = [parse_variant(v) for v in cfg.variants]
    except ValueError as err:
        parser.error(str(err))
    if cfg.frames < 1 or cfg.draws < 1 or cfg.group_size < 2:
        parser.error("--frames and --draws must be >= 1 and --group-size >= 2")
    ckpt, bc = open_bc_checkpoint(parser, cfg.checkpoint)
    dataset = Path(resolve_repo_path(cfg.dataset))
    if not all((dataset / name).is_file() for name in ("meta/info.json", EPISODES_FILE)):
        parser.error(f"--dataset {dataset}: no demo dataset there; write it with `python recipes/collect_demos.py --out {dataset}`")
    if cfg.data and not Path(cfg.data).is_file():
        parser.error(f"--data {cfg.data}: no such file; drop --data to collect an iteration")
    from ript.recipes.bc_pretrain import BCConfig, load_demos

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(2)
    start = PI0Actor.from_pretrained(ckpt, device="cpu")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.data:
        saved = torch.load(cfg.data, weights_only=False)
        data = TensorDict(saved, batch_size=[len(saved["advantage"])])
    else:
        t0 = time.perf_counter()
        data = collect_iteration(start, ckpt, bc, cfg)
        torch.save(data.to_dict(), out / "iteration.pt")
        print(f"collected {data.shape[0]} steps in {time.perf_counter() - t0:.0f}s -> {out / 'iteration.pt'}", flush=True)
    informative = data.get("informative").reshape(-1).bool()
    held, _, _ = load_demos(BCConfig(dataset=str(dataset), demo_init_states=cfg.eval_init_states), start,
                            norm=NormStats.from_lerobot_checkpoint(ckpt))  # the policy's normalisation, whatever the dataset
    pick = lambda td, s: td[torch.randperm(td.shape[0], generator=torch.Generator().manual_seed(s))[: cfg.frames]]  # noqa: E731
    held, own = pick(held, 0), pick(data, 1)
    instructions = {ep["task"]: ep["instruction"] for ep in json.loads((dataset / EPISODES_FILE).read_text())}
    tokens = held.get(("observation", "language_tokens"))
    task_rows = {f"held:{t}": (tokens == start.tokenize([instructions[t]])[0]).all(-1) for t in bc["tasks"] if t in instructions}
    adv = own.get("advantage").reshape(-1)
    shape = (start.chunk_size, start.action_dim)
    held_nt, own_nt = draws(held.shape[0], shape, cfg.draws, 5), draws(own.shape[0], shape, cfg.draws, 6)
    measure = lambda actor: {  # noqa: E731
        **mean_losses(actor, held, held_nt, {"held": torch.ones(held.shape[0], dtype=torch.bool), **task_rows}),
        **mean_losses(actor, own, own_nt, {"own+": adv > 0, "own-": adv < 0}),
    }
    before = measure(start)
    print(f"{data.shape[0]} steps ({int(informative.sum())} of mixed groups); start losses "
          + ", ".join(f"{k} {v:.4f}" for k, v in before.items()), flush=True)
    train = data[informative].exclude("informative")  # the advantage term's steps, as learning_libero trains by default
    buffer = make_replay_buffer(train.shape[0])
    refill_replay_buffer(buffer, train)  # read, never changed, by every variant's update
    results = []
    for spec, v in zip(cfg.variants, variants):
        actor = copy.deepcopy(start)
        reference = copy.deepcopy(start) if v["anchor"] > 0 else None
        loss = RIPTCFGLoss(actor, temperature=v["temperature"], w_max=v["w_max"], reference=reference, anchor_coef=v["anchor"])
        optimizer = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=v["lr"], weight_decay=0.0)
        t0 = time.perf_counter()
        metrics = update_policy(loss, buffer, optimizer, epochs=v["epochs"], minibatch_size=v["minibatch_size"], max_grad_norm=1.0,
                                generator=torch.Generator().manual_seed(cfg.seed))
        after = measure(actor)
        ratios = {k: after[k] / before[k] for k in before}
        gap = (after["own-"] - before["own-"]) - (after["own+"] - before["own+"])
        results.append({"variant": spec, "steps": metrics["optimizer_steps"], "seconds": round(time.perf_counter() - t0, 1),
                        "before": before, "after": after, "ratio": ratios, "gap": gap})
        print(f"{spec}: {metrics['optimizer_steps']} steps | " + ", ".join(f"{k} x{r:.3f}" for k, r in ratios.items())
              + f" | gap {gap:+.4f}", flush=True)
    (out / "update_drift.json").write_text(json.dumps({"config": vars(cfg), "results": results}, indent=2))
    return {"before": before, "results": results}


if __name__ == "__main__":
    main()
