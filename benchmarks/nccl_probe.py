"""A process group under torchrun and the time of one all-reduce against a plain on-device copy of the same tensor.

    .venv/bin/python -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/nccl_probe.py backend=nccl mib=64

Why: the recipe only builds a process group for two or more ranks, so a one-GPU machine needs
this probe to show that nccl initialises and reduces. Prints seconds per all-reduce, per copy
and their ratio (same process, same tensor).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError


@dataclass
class ProbeConfig:
    backend: str = "nccl"  # nccl (one GPU per rank) | gloo (CPU)
    mib: int = 256  # tensor size
    repeats: int = 10


def validate(cfg: ProbeConfig) -> None:
    """Backend and sizes, before a process group is built."""
    if cfg.backend not in ("nccl", "gloo"):
        raise ConfigError(f"backend={cfg.backend!r} is not one of ['nccl', 'gloo']: set backend=nccl or backend=gloo")
    if cfg.mib < 1 or cfg.repeats < 1:
        raise ConfigError(f"mib and repeats must be >= 1, got {cfg.mib} and {cfg.repeats}")


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Mean seconds per call after one warm-up call, synchronised on CUDA."""
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeats


def probe(args: ProbeConfig) -> None:
    """Build the process group, time one all-reduce against a copy, print one line."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if args.backend == "nccl" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(args.backend, device_id=device if device.type == "cuda" else None)
    try:
        x = torch.ones(args.mib * 2**20 // 4, device=device)
        out = torch.empty_like(x)
        reduce_s = timed(lambda: dist.all_reduce(x), device, args.repeats)
        copy_s = timed(lambda: out.copy_(x), device, args.repeats)
        ok = bool(torch.isfinite(x).all())
        print(f"{args.backend} process group: world {dist.get_world_size()}, rank {dist.get_rank()}, {device}; "
              f"all_reduce of {args.mib} MiB {reduce_s * 1e3:.2f} ms, copy {copy_s * 1e3:.2f} ms, ratio all_reduce / copy {reduce_s / copy_s:.2f}, finite {ok}")
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    run_cli(ProbeConfig, probe, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
