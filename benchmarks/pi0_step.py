"""One PI0 update step (forward + backward + AdamW) and one action chunk, with and without gradient checkpointing.

    .venv/bin/python benchmarks/pi0_step.py size=tiny device=cpu              # runs here in seconds
    .venv/bin/python benchmarks/pi0_step.py size=full device=cuda batch=8     # lerobot's real sizes on a GPU

The model is built from a config alone (random weights, bfloat16 allocated directly, LIBERO
features at 224 px, chunk 50), on the target device when it is CUDA, with the trunk frozen as
RIPT trains it (policy.freeze=trunk). Both measurements run in train mode for the update and
eval mode for sampling, as the recipe does; the update runs under bf16 autocast. Printed:
seconds per update step and per action chunk, peak memory (CUDA: max allocated; CPU: VmHWM),
and checkpointing as a ratio against no checkpointing measured in the same process.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pi0_full_size import CHUNK, IMAGE, pi0_config, peak_rss_gib, reset_peak_rss, tiny_spec_for  # noqa: E402

from ript.recipes.training.cli import run_cli  # noqa: E402
from ript.recipes.training.config import ConfigError  # noqa: E402

GIB = 2**30


@dataclass
class StepConfig:
    size: str = "tiny"  # tiny | full (lerobot's gemma_2b + gemma_300m)
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")  # cpu | cuda | cuda:N
    batch: int = 4  # samples per update step
    repeats: int = 3
    json: str | None = None  # write the numbers here


def validate(cfg: StepConfig) -> None:
    """Choices and sizes, before PI0 is built."""
    if cfg.size not in ("tiny", "full"):
        raise ConfigError(f"size={cfg.size!r} is not one of ['tiny', 'full']: set size=tiny or size=full")
    if cfg.batch < 1 or cfg.repeats < 1:
        raise ConfigError(f"batch and repeats must be >= 1, got {cfg.batch} and {cfg.repeats}")
    try:
        torch.device(cfg.device)
    except RuntimeError as err:
        raise ConfigError(f"device={cfg.device!r} is not a torch device: use cpu, cuda or cuda:N") from err


def build(size: str, device: torch.device) -> Any:
    """A PI0Policy of `size` on `device` (random weights, bf16 at full size)."""
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy

    from ript.algos import PI0Actor, bf16_construction, build_libero_tokenizer, tiny_pi0_sizes

    config = pi0_config(size, str(device))
    torch.manual_seed(0)
    with torch.device(device), tiny_pi0_sizes(tiny_spec_for(size)), bf16_construction(config):
        policy = PI0Policy(config)
    actor = PI0Actor(policy, tokenizer=build_libero_tokenizer())
    actor.freeze("trunk")
    return actor


def batch_td(batch: int, device: torch.device) -> Any:
    """A random batch in lerobot's PI0 input format, for timing updates."""
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    chunk = torch.zeros(batch, CHUNK, 32)
    chunk[..., :7] = torch.randn(batch, CHUNK, 7, generator=g)
    return TensorDict(
        {"observation": {"image": torch.randint(0, 256, (batch, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8),
                         "wrist_image": torch.randint(0, 256, (batch, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8),
                         "state": torch.randn(batch, 32, generator=g)},
         "task": ["put the alphabet soup in the basket"] * batch, "action_chunk": chunk},
        [batch],
    ).to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / GIB if device.type == "cuda" else peak_rss_gib()


def measure(actor: Any, td: Any, device: torch.device, *, checkpointing: bool, repeats: int) -> dict[str, float]:
    """One warm-up, then the mean of `repeats` update steps and of `repeats` action chunks."""
    from ript.algos import training_mode

    actor.set_gradient_checkpointing(checkpointing)
    optimizer = torch.optim.AdamW([p for p in actor.parameters() if p.requires_grad], lr=1e-6)

    def update() -> None:
        with training_mode(actor, True), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = actor.per_sample_loss(td).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    update()  # warm-up (allocator, optimizer state)
    _sync(device)
    _reset_peak(device)
    start = time.perf_counter()
    for _ in range(repeats):
        update()
    _sync(device)
    update_s = (time.perf_counter() - start) / repeats
    update_peak = _peak_gib(device)
    with training_mode(actor, False), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        actor.sample_actions(td[:1])
        _sync(device)
        start = time.perf_counter()
        for _ in range(repeats):
            actor.sample_actions(td[:1])
        _sync(device)
    sample_s = (time.perf_counter() - start) / repeats
    del optimizer
    actor.zero_grad(set_to_none=True)
    return {"update_s": update_s, "update_peak_gib": update_peak, "chunk_s": sample_s}


def run(args: StepConfig) -> dict[str, Any]:
    """Build PI0, measure with and without checkpointing, print the table."""
    device = torch.device(args.device)
    start = time.perf_counter()
    actor = build(args.size, device)
    build_s = time.perf_counter() - start
    total = sum(x.numel() for x in actor.parameters())
    trainable = sum(x.numel() for x in actor.parameters() if x.requires_grad)
    td = batch_td(args.batch, device)
    off = measure(actor, td, device, checkpointing=False, repeats=args.repeats)
    on = measure(actor, td, device, checkpointing=True, repeats=args.repeats)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    out = {"size": args.size, "device": name, "batch": args.batch, "params": total, "trainable": trainable, "build_s": build_s,
           "no_checkpointing": off, "checkpointing": on}
    mem = "max allocated" if device.type == "cuda" else "peak RSS"
    print(f"PI0 {args.size} on {name}: {total / 1e9:.3f} B parameters, {trainable / 1e6:.1f} M trainable, built in {build_s:.1f} s; "
          f"bf16 autocast, update batch {args.batch}, chunk {CHUNK}")
    print(f"  {'':26s}{'no checkpointing':>18s}{'checkpointing':>15s}{'ratio':>8s}")
    for key, label in (("update_s", "s / update step"), ("update_peak_gib", f"update {mem} GiB"), ("chunk_s", "s / action chunk (batch 1)")):
        print(f"  {label:26s}{off[key]:>18.3f}{on[key]:>15.3f}{on[key] / off[key]:>8.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    return run_cli(StepConfig, run, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
