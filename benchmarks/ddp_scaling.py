"""Update-phase throughput of RIPT-CFG under DDP: samples/s of `update_policy` on a fixed buffer, N ranks vs 1.

Why: the update is the only phase DDP synchronises every step (gradient all-reduce,
global advantage statistics, the agreed minibatch count); this measures what that
costs. Weak scaling: every rank holds the same number of samples and trains on its
share of a global minibatch (per-rank minibatch x ranks), so ideal N-rank throughput
is N x the 1-rank throughput. The script launches torchrun itself, once per rank count,
and prints samples/s and the ratio to 1 rank.

    .venv/bin/python benchmarks/ddp_scaling.py                                  # CPU, gloo, 1 vs 2 ranks, tiny PI0
    .venv/bin/python benchmarks/ddp_scaling.py --device cuda --ranks 1,2,4,8    # one GPU per rank, nccl
    .venv/bin/python benchmarks/ddp_scaling.py --policy mlp --samples-per-rank 256

CPU note: torchrun gives each rank one thread (OMP_NUM_THREADS=1), so 2 ranks need 2
free cores to scale; on a shared machine the ratio measures the contention too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))


def make_policy(kind: str, device: torch.device, image_size: int, width: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        from ript.algos import FlowMatchingMLPPolicy

        return FlowMatchingMLPPolicy(obs_dim=32, action_dim=32, chunk_size=10, n_action_steps=5, hidden=256, depth=3, supports_cfg=False).to(device)
    from ript.algos import PI0Actor, TinyPI0Spec

    spec = TinyPI0Spec(width=width, depth=2, mlp_dim=2 * width, vision_width=width, vision_depth=2, vision_mlp_dim=2 * width, patch_size=16)
    return PI0Actor.tiny(spec, chunk_size=10, n_action_steps=5, image_size=image_size, num_inference_steps=2, device=str(device)).to(device)


def make_data(kind: str, policy: torch.nn.Module, n: int, image_size: int, seed: int) -> TensorDict:
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


def worker(args: argparse.Namespace) -> None:
    """One rank: time `--reps` update_policy calls (after one warm-up) and report from rank 0."""
    from ript.algos import RIPTCFGLoss, make_replay_buffer, refill_replay_buffer, update_policy
    from ript.recipes.common.distributed import barrier, distributed_session
    from ript.recipes.common.factories import wrap_ddp

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


def all_reduce_max(info, value: float) -> float:
    from ript.recipes.common.distributed import all_gather_object

    return max(all_gather_object(info, value))


def launch(args: argparse.Namespace, ranks: int) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}", "--master_port", str(29600 + ranks), __file__, "--worker",
           "--device", args.device, "--policy", args.policy, "--samples-per-rank", str(args.samples_per_rank),
           "--minibatch-per-rank", str(args.minibatch_per_rank), "--reps", str(args.reps), "--image-size", str(args.image_size), "--width", str(args.width)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"torchrun with {ranks} ranks failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu (gloo) or cuda (nccl, one GPU per rank)")
    parser.add_argument("--ranks", default="1,2", help="comma-separated rank counts; the first is the baseline")
    parser.add_argument("--policy", choices=("pi0", "mlp"), default="pi0", help="tiny PI0 or the flow-matching MLP")
    parser.add_argument("--samples-per-rank", type=int, default=16)
    parser.add_argument("--minibatch-per-rank", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=64, help="tiny PI0 Gemma/SigLIP width")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per rank")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    counts = [int(x) for x in args.ranks.split(",")]
    if args.device == "cuda" and max(counts) > torch.cuda.device_count():
        raise SystemExit(f"--ranks asks for {max(counts)} GPUs but {torch.cuda.device_count()} are visible: lower --ranks")
    print(f"update_policy throughput, {args.policy}, {args.samples_per_rank} samples and minibatch {args.minibatch_per_rank} per rank, device {args.device}")
    base = None
    for n in counts:
        r = launch(args, n)
        base = base or r["samples_per_s"]
        print(f"  {n} rank(s): {r['samples_per_s']:8.2f} samples/s  (best {r['best_s']:.3f} s, median {r['median_s']:.3f} s for {r['samples']} samples)"
              f"  ratio to {counts[0]} rank(s): {r['samples_per_s'] / base:.2f}  ideal {n / counts[0]:.2f}")


if __name__ == "__main__":
    main()
