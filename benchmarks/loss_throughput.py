"""RIPTCFGLoss forward+backward on the tiny PI0 versus lerobot's own PI0Policy.forward + backward.

Why: the RL loss must cost what supervised PI0 training costs (target: ratio <= 1.05 in
`weighted` mode); `cfg` mode is reported too. Both sides see the same batch and the same
weights; repetitions are interleaved (each repetition runs every case once, in a fresh
random order) so that load from other processes hits all sides alike, and medians are
compared. One torch thread by default: on a small shared CPU, two threads per process
mostly measure thread contention (medians were 4x slower and far noisier). lerobot's side gets its batch
already in its format (float images, tokens), as its preprocessor would hand it over;
our side starts from the stored uint8 tensordict (conversion and cached tokenization
included). Also prints the tiny actor's sampling time and per-sample loss fwd+bwd time.

    .venv/bin/python benchmarks/loss_throughput.py batch=8 reps=20
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import torch
from tensordict import TensorDict

from ript.algos import PI0Actor, RIPTCFGLoss, TinyPI0Spec
from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError


@dataclass
class LossConfig:
    batch: int = 8
    reps: int = 20  # interleaved repetitions; medians are compared
    warmup: int = 3
    image_size: int = 64
    chunk_size: int = 10
    width: int = 64  # tiny PI0 Gemma/SigLIP width
    depth: int = 2
    threads: int = 1  # torch intra-op threads (0 = torch's default)


def validate(cfg: LossConfig) -> None:
    """Sizes, before the policy is built."""
    if cfg.reps < 1 or cfg.batch < 1:
        raise ConfigError("reps and batch must be >= 1")


def make_batch(actor: PI0Actor, batch: int, image_size: int, seed: int = 0) -> TensorDict:
    """A batch of decision steps in PI0's input schema, with advantages, for timing the loss."""
    g = torch.Generator().manual_seed(seed)
    tasks = ["put the bowl on the plate", "open the top drawer of the cabinet", "pick up the ketchup and place it in the basket"]
    td = TensorDict(
        {
            "observation": {
                "image": torch.randint(0, 256, (batch, 3, image_size, image_size), generator=g, dtype=torch.uint8),
                "wrist_image": torch.randint(0, 256, (batch, 3, image_size, image_size), generator=g, dtype=torch.uint8),
                "state": torch.randn(batch, 32, generator=g),
            },
            "task": [tasks[i % len(tasks)] for i in range(batch)],
            "advantage": torch.randn(batch, 1, generator=g),
        },
        [batch],
    )
    td["action_chunk"] = actor.sample_actions(td)
    mask = torch.zeros(batch, actor.chunk_size, dtype=torch.bool)
    mask[:, : actor.n_action_steps] = True  # executed steps only, as the recipe stores them
    td["action_mask"] = mask
    return td


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of `fn` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(args: LossConfig) -> None:
    """Time every case interleaved and print medians and ratios against lerobot's forward."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    spec = TinyPI0Spec(width=args.width, depth=args.depth)
    common = dict(chunk_size=args.chunk_size, n_action_steps=min(5, args.chunk_size), image_size=args.image_size)
    actor = PI0Actor.tiny(spec, supports_cfg=True, **common)
    td = make_batch(actor, args.batch, args.image_size)
    lero_batch = actor.lerobot_batch(td)
    lero_batch["action"] = td["action_chunk"][..., : actor.action_dim_loss]
    losses = {mode: RIPTCFGLoss(actor, mode=mode) for mode in ("weighted", "cfg")}

    def ours(mode: str) -> None:
        actor.zero_grad(set_to_none=True)
        losses[mode](td)["loss_ript_cfg"].backward()

    def lerobot() -> None:
        actor.zero_grad(set_to_none=True)
        loss, _ = actor.policy(lero_batch)  # PI0Policy.forward through __call__
        loss.backward()

    def per_sample() -> None:
        actor.zero_grad(set_to_none=True)
        actor.per_sample_loss(td).mean().backward()

    def sample() -> None:
        actor.sample_actions(td)

    def sample_guided() -> None:
        actor.sample_actions(td, guidance=1.5)

    cases = {
        "lerobot": lerobot,
        "weighted": lambda: ours("weighted"),
        "cfg": lambda: ours("cfg"),
        "per_sample": per_sample,
        "sample": sample,
        "sample_guided": sample_guided,
    }
    for _ in range(args.warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(args.reps):
        order = list(cases)
        rng.shuffle(order)
        for name in order:
            times[name].append(timed(cases[name]))
    med = {name: statistics.median(ts) for name, ts in times.items()}
    best = {name: min(ts) for name, ts in times.items()}

    params = sum(p.numel() for p in actor.parameters())
    print(
        f"tiny PI0: width {args.width}, depth {args.depth}, {params / 1e6:.2f}M params, batch {args.batch}, "
        f"chunk {args.chunk_size}, images {args.image_size}px, torch threads {torch.get_num_threads()}, {args.reps} reps (median)"
    )
    print(f"lerobot PI0Policy.forward + backward : {med['lerobot'] * 1e3:8.1f} ms   (min {best['lerobot'] * 1e3:.1f})")
    for mode in ("weighted", "cfg"):
        target = " (target <= 1.05)" if mode == "weighted" else ""
        print(
            f"RIPTCFGLoss {mode:8s} fwd + bwd      : {med[mode] * 1e3:8.1f} ms   ratio {med[mode] / med['lerobot']:.3f}{target}"
            f"   (min {best[mode] * 1e3:.1f}, ratio of mins {best[mode] / best['lerobot']:.3f})"
        )
    print(f"PI0Actor.per_sample_loss fwd + bwd   : {med['per_sample'] * 1e3:8.1f} ms")
    print(f"PI0Actor.sample_actions (no_grad)    : {med['sample'] * 1e3:8.1f} ms   ({actor.policy.config.num_inference_steps} denoising steps)")
    print(f"PI0Actor.sample_actions guidance=1.5 : {med['sample_guided'] * 1e3:8.1f} ms   (two expert passes per step)")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    run_cli(LossConfig, measure, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
