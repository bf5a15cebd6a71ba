"""Update-phase throughput of RIPT-CFG under DDP: samples/s of `update_policy` on a fixed buffer, N ranks vs 1.

Why: the update is the only phase DDP synchronises every step (gradient all-reduce,
global advantage statistics, the agreed minibatch count); this measures what that
costs. Weak scaling: every rank holds the same number of samples and trains on its
share of a global minibatch (per-rank minibatch x ranks), so ideal N-rank throughput
is N x the 1-rank throughput. The script launches torchrun itself, once per rank count,
and prints samples/s and the ratio to 1 rank.

    .venv/bin/python benchmarks/ddp_scaling.py                                  # CPU, gloo, 1 vs 2 ranks, tiny PI0
    .venv/bin/python benchmarks/ddp_scaling.py device=cuda ranks=[1,2,4,8]      # one GPU per rank, nccl
    .venv/bin/python benchmarks/ddp_scaling.py policy=mlp samples_per_rank=256

CPU note: torchrun gives each rank one thread (OMP_NUM_THREADS=1), so 2 ranks need 2
free cores to scale; on a shared machine the ratio measures the contention too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from ript.recipes.training.cli import load_config_or_exit, run_cli, to_dotlist  # noqa: E402
from ript.recipes.training.config import ConfigError  # noqa: E402

WORKER = "--worker"  # internal: argv[0] of the per-rank processes this script launches under torchrun


@dataclass
class ScalingConfig:
    device: str = "cpu"  # cpu (gloo) or cuda (nccl, one GPU per rank)
    ranks: list[int] = field(default_factory=lambda: [1, 2])  # rank counts; the first is the baseline
    policy: str = "pi0"  # pi0 (tiny PI0) | mlp (the flow-matching MLP)
    samples_per_rank: int = 16
    minibatch_per_rank: int = 8
    reps: int = 5
    image_size: int = 64
    width: int = 64  # tiny PI0 Gemma/SigLIP width
    threads: int = 1  # torch threads per rank


def validate(cfg: ScalingConfig) -> None:
    """Choices and counts, before torchrun starts."""
    if cfg.policy not in ("pi0", "mlp"):
        raise ConfigError(f"policy={cfg.policy!r} is not one of ['pi0', 'mlp']: set policy=pi0 or policy=mlp")
    if not cfg.ranks or min(cfg.ranks) < 1:
        raise ConfigError(f"ranks={cfg.ranks} must list rank counts >= 1, e.g. ranks=[1,2]")
    if min(cfg.samples_per_rank, cfg.minibatch_per_rank, cfg.reps, cfg.threads) < 1:
        raise ConfigError("samples_per_rank, minibatch_per_rank, reps and threads must be >= 1")


def make_policy(kind: str, device: torch.device, image_size: int, width: int) -> torch.nn.Module:
    """The policy each rank trains (same seed everywhere, as DDP starts from one copy)."""
    torch.manual_seed(0)
    if kind == "mlp":
        from ript.algos import FlowMatchingMLPPolicy

        return FlowMatchingMLPPolicy(obs_dim=32, action_dim=32, chunk_size=10, n_action_steps=5, hidden=256, depth=3, supports_cfg=False).to(device)
    from ript.algos import PI0Actor, TinyPI0Spec

    spec = TinyPI0Spec(width=width, depth=2, mlp_dim=2 * width, vision_width=width, vision_depth=2, vision_mlp_dim=2 * width, patch_size=16)
    return PI0Actor.tiny(spec, chunk_size=10, n_action_steps=5, image_size=image_size, num_inference_steps=2, device=str(device)).to(device)


def make_data(kind: str, policy: torch.nn.Module, n: int, image_size: int, seed: int) -> TensorDict:
    """A rank's synthetic decision steps, shaped like kept rollout steps."""
    g = torch.Generator().manual_seed(seed)
    td = TensorDict({"action_chunk": torch.randn(n, 10, 32, generator=g), "advantage": torch.randn(n, 1, generator=g)}, [n])
    if kind == "mlp":
        td["observation", "state"] = torch.randn(n, 32, generator=g)
        return td
    tokens, mask = policy.tokenize(["put the bowl on the plate"] * n)
    td["observation"] = TensorDict(
        {
            "image": torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8),
            "wrist_image": torch.randint(0, 256, (n, 3, image_size, image_size), generator=g, dtype=torch.uint8),
            "state": torch.randn(n, 32, generator=g),
            "language_tokens": tokens,
            "language_attention_mask": mask,
        },
        [n],
    )
    return td


def worker(args: ScalingConfig) -> None:
    """One rank: time `reps` update_policy calls (after one warm-up) and report from rank 0."""
    from ript.algos import RIPTCFGLoss, make_replay_buffer, refill_replay_buffer, update_policy
    from ript.recipes.training.distributed import barrier, distributed_session
    from ript.recipes.training.factories import wrap_ddp

    with distributed_session(args.device, None, 600) as info:
        policy = make_policy(args.policy, info.device, args.image_size, args.width)
        loss = RIPTCFGLoss(policy, sync_across_ranks=info.enabled)
        module = wrap_ddp(loss, info.device) if info.enabled else loss
        buffer = make_replay_buffer(args.samples_per_rank)
        refill_replay_buffer(buffer, make_data(args.policy, policy, args.samples_per_rank, args.image_size, seed=info.rank))
        opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)
        global_mb = args.minibatch_per_rank * info.world_size

        def update() -> None:
            update_policy(module, buffer, opt, epochs=1, minibatch_size=global_mb, device=info.device, generator=torch.Generator().manual_seed(0))
            if info.device.type == "cuda":
                torch.cuda.synchronize()

        update()  # warm-up (allocations, DDP buckets)
        times = []
        for _ in range(args.reps):
            barrier(info, "benchmark start")
            start = time.perf_counter()
            update()
            times.append(float(all_reduce_max(info, time.perf_counter() - start)))  # the slowest rank sets the pace
        if info.is_main:
            best = min(times)
            samples = args.samples_per_rank * info.world_size
            print(json.dumps({"ranks": info.world_size, "samples": samples, "best_s": best, "median_s": sorted(times)[len(times) // 2], "samples_per_s": samples / best}))


def all_reduce_max(info: Any, value: float) -> float:
    """The largest of the ranks' values (the slowest rank sets a step's time)."""
    from ript.recipes.training.distributed import all_gather_object

    return max(all_gather_object(info, value))


def launch(args: ScalingConfig, ranks: int) -> dict:
    """Run the worker on `ranks` processes with torchrun and read back its timings."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_port", str(29600 + ranks), __file__,
           WORKER, *to_dotlist(args)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {ranks} ranks failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def scale(args: ScalingConfig) -> None:
    """Launch torchrun once per rank count; print samples/s and the ratio to the first."""
    counts = list(args.ranks)
    if args.device == "cuda" and max(counts) > torch.cuda.device_count():
        raise SystemExit(f"ranks asks for {max(counts)} GPUs but {torch.cuda.device_count()} are visible: lower ranks")
    print(f"update_policy throughput, {args.policy}, {args.samples_per_rank} samples and minibatch {args.minibatch_per_rank} per rank, device {args.device}")
    base = None
    for n in counts:
        r = launch(args, n)
        base = base or r["samples_per_s"]
        print(f"  {n} rank(s): {r['samples_per_s']:8.2f} samples/s  (best {r['best_s']:.3f} s, median {r['median_s']:.3f} s for {r['samples']} samples)"
              f"  ratio to {counts[0]} rank(s): {r['samples_per_s'] / base:.2f}  ideal {n / counts[0]:.2f}")



def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [WORKER]:  # a rank launched by `launch`, with the parent's config as key=value
        worker(load_config_or_exit(ScalingConfig, argv[1:], validate))
        return
    run_cli(ScalingConfig, scale, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
