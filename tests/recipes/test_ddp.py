"""DDP on CPU with gloo: the recipe under torchrun, 2 ranks x b == 1 process x 2b, failing ranks never hang.

This file is also the worker that torchrun launches (`python -m torch.distributed.run
--nproc_per_node=2 tests/recipes/test_ddp.py <case> <out>`), so the code that runs
on the ranks sits beside the assertions that check it.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensordict import TensorDict

ROOT = Path(__file__).resolve().parents[2]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from ript.algos import FlowMatchingMLPPolicy, RIPTCFGLoss, make_replay_buffer, refill_replay_buffer, update_policy  # noqa: E402

PY = sys.executable
TORCHRUN = [PY, "-m", "torch.distributed.run", "--nproc_per_node=2"]
# (name, loss mode, policy, samples per rank, global minibatch, epochs, grad_accum_steps)
CASES = [
    ("even_weighted", "weighted", "mlp", (3, 3), 6, 1, 1),
    ("even_cfg", "cfg", "mlp", (3, 3), 6, 1, 1),
    ("empty_rank", "weighted", "mlp", (5, 0), 5, 1, 1),
    ("uneven_multistep", "weighted", "mlp", (5, 1), 3, 2, 1),
    ("pi0_weighted", "weighted", "pi0", (2, 2), 4, 1, 1),
    # 4 global minibatches of 2 accumulated into one step: the effective batch is all 8 samples
    ("uneven_accum_weighted", "weighted", "mlp", (5, 3), 2, 1, 4),
]
SAME_PARTITION = {"uneven_multistep"}  # checked against one process on the ranks' own minibatch partition
PX, CHUNK = 32, 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


# --------------------------------------------------------------------------- policies and data


def make_policy(kind: str, mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mlp":
        return FlowMatchingMLPPolicy(obs_dim=4, action_dim=2, chunk_size=CHUNK, n_action_steps=2, hidden=16, depth=2, supports_cfg=mode == "cfg")
    from ript.algos import PI0Actor

    return PI0Actor.tiny(chunk_size=CHUNK, n_action_steps=2, image_size=PX, num_inference_steps=2, supports_cfg=mode == "cfg", seed=0)


def make_data(kind: str, n: int, policy: torch.nn.Module, seed: int = 0) -> TensorDict:
    """n decision steps with advantages and FIXED flow-matching noise/time/label dropout."""
    g = torch.Generator().manual_seed(seed)
    adim = 2 if kind == "mlp" else 32
    td = TensorDict(
        {
            "action_chunk": torch.randn(n, CHUNK, adim, generator=g),
            "advantage": torch.randn(n, 1, generator=g),
            "fm_noise": torch.randn(n, CHUNK, adim, generator=g),
            "fm_time": torch.rand(n, generator=g) * 0.9 + 0.05,
            "label_drop": torch.rand(n, generator=g) < 0.3,
        },
        [n],
    )
    if kind == "mlp":
        td["observation", "state"] = torch.randn(n, 4, generator=g)
    else:
        tokens, mask = policy.tokenize(["put the bowl on the plate"] * n)
        td["observation"] = TensorDict(
            {
                "image": torch.randint(0, 256, (n, 3, PX, PX), generator=g, dtype=torch.uint8),
                "wrist_image": torch.randint(0, 256, (n, 3, PX, PX), generator=g, dtype=torch.uint8),
                "state": torch.randn(n, 32, generator=g),
                "language_tokens": tokens,
                "language_attention_mask": mask,
            },
            [n],
        )
    return td


def _flat(policy: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in policy.parameters()])


def run_update(loss_module, policy, data: TensorDict | None, minibatch_size: int, epochs: int, grad_accum_steps: int = 1) -> dict:
    """One update_policy call with SGD and NO clipping (a scale error must show); returns parameters, steps, loss, norm."""
    buffer = make_replay_buffer(64)
    refill_replay_buffer(buffer, data)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    out = update_policy(
        loss_module, buffer, opt, epochs=epochs, minibatch_size=minibatch_size, grad_accum_steps=grad_accum_steps, max_grad_norm=None, generator=torch.Generator().manual_seed(1)
    )
    return {"params": _flat(policy), "steps": out["optimizer_steps"], "loss": out["loss_ript_cfg"], "grad_norm": out["grad_norm_preclip"]}


def reference(case: tuple) -> dict:
    """The same update in one process holding both ranks' data, without DDP."""
    _, mode, kind, sizes, mbs, epochs, accum = case
    policy = make_policy(kind, mode)
    data = make_data(kind, sum(sizes), policy)
    return run_update(RIPTCFGLoss(policy, mode=mode), policy, data, mbs, epochs, accum)


def reference_same_partition(case: tuple) -> dict:
    """One process, no DDP, no update_policy: plain loss -> backward -> SGD step on the union of the parts
    each rank draws (its own shuffle of its own data, split into M = ceil(total / minibatch) parts)."""
    _, mode, kind, sizes, mbs, epochs, accum = case
    assert accum == 1
    policy = make_policy(kind, mode)
    data = make_data(kind, sum(sizes), policy)
    loss = RIPTCFGLoss(policy, mode=mode)
    opt = torch.optim.SGD([p for p in policy.parameters() if p.requires_grad], lr=0.5)
    m = -(-sum(sizes) // mbs)
    gens = [torch.Generator().manual_seed(1) for _ in sizes]  # each rank's own shuffle
    offsets = [sum(sizes[:r]) for r in range(len(sizes))]
    steps, norms, losses = 0, [], []
    for _ in range(epochs):
        orders = [torch.randperm(n, generator=g) for n, g in zip(sizes, gens)]
        starts = [0] * len(sizes)
        for part in range(m):
            idx = []
            for r, n in enumerate(sizes):
                size = n // m + (1 if part < n % m else 0)  # an empty part is a masked padding sample: nothing
                idx.append(orders[r][starts[r] : starts[r] + size] + offsets[r])
                starts[r] += size
            opt.zero_grad()
            out = loss(data[torch.cat(idx)])
            out["loss_ript_cfg"].backward()
            norms.append(float(torch.cat([p.grad.reshape(-1) for p in policy.parameters() if p.grad is not None]).norm()))
            losses.append(float(out["loss_ript_cfg"].detach()))
            opt.step()
            steps += 1
    return {"params": _flat(policy), "steps": steps, "loss": sum(losses) / steps, "grad_norm": sum(norms) / steps}


# --------------------------------------------------------------------------- torchrun workers


def worker_equivalence(out: Path, names: list[str]) -> None:
    from ript.recipes.training.distributed import distributed_session
    from ript.recipes.training.factories import wrap_ddp

    with distributed_session("cpu", "gloo", 60) as info:
        results = {}
        for case in CASES:
            name, mode, kind, sizes, mbs, epochs, accum = case
            if name not in names:
                continue
            policy = make_policy(kind, mode)
            if info.rank == 1:  # different initial weights: DDP must broadcast rank 0's
                with torch.no_grad():
                    for p in policy.parameters():
                        p.add_(0.01)
            data = make_data(kind, sum(sizes), policy)
            start = sum(sizes[: info.rank])
            mine = data[start : start + sizes[info.rank]] if sizes[info.rank] else None
            loss = wrap_ddp(RIPTCFGLoss(policy, mode=mode, sync_across_ranks=True), info.device)
            results[name] = run_update(loss, policy, mine, mbs, epochs, accum)
        torch.save(results, out / f"rank{info.rank}.pt")


def worker_fault(out: Path, fault: str) -> None:
    """The toy recipe on 2 ranks; rank 1 raises (or hangs) when its second update starts."""
    import ript.recipes.ript_cfg as recipe
    from ript.recipes.training import trainer

    if int(os.environ["RANK"]) == 1:
        real, calls = trainer.update_policy, []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                if fault == "raise":
                    raise RuntimeError("injected failure on rank 1")
                time.sleep(3600)
            return real(*args, **kwargs)

        trainer.update_policy = failing
    recipe.main(["--config-name", "toy", f"logging.output_dir={out / 'run'}", "train.iterations=3", "distributed.backend=gloo", "distributed.timeout_s=15"])


# --------------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def equivalence_results(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("ddp_equivalence")
    names = [c[0] for c in CASES]
    cmd = [*TORCHRUN, f"--master_port={_free_port()}", __file__, "equivalence", str(out), ",".join(names)]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {r: torch.load(out / f"rank{r}.pt") for r in (0, 1)}


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_two_ranks_equal_one_process_with_the_union(case, equivalence_results):
    name = case[0]
    r0, r1 = equivalence_results[0][name], equivalence_results[1][name]
    assert torch.equal(r0["params"], r1["params"]), "replicas differ after the update"
    ref = reference_same_partition(case) if name in SAME_PARTITION else reference(case)
    assert r0["steps"] == ref["steps"] >= 1
    assert not torch.equal(ref["params"], _flat(make_policy(case[2], case[1])))
    assert torch.isfinite(ref["params"]).all()
    assert (r0["params"] - ref["params"]).abs().max().item() < 1e-6
    assert r0["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-5)  # the unclipped norm DDP's average gives
    assert r0["loss"] == pytest.approx(ref["loss"], rel=1e-5, abs=1e-6)  # logged loss: the global minibatch loss


@pytest.mark.slow
def test_uneven_ranks_run_the_same_steps_and_stay_identical(equivalence_results):
    r0, r1 = equivalence_results[0]["uneven_multistep"], equivalence_results[1]["uneven_multistep"]
    # 6 samples, global minibatch 3 -> 2 minibatches per epoch on BOTH ranks (rank 1 pads its second one), 2 epochs
    assert r0["steps"] == r1["steps"] == 4
    assert torch.equal(r0["params"], r1["params"])


def test_global_weights_ignore_padding_and_match_one_batch():
    policy = make_policy("mlp", "weighted")
    loss = RIPTCFGLoss(policy, temperature=0.7, w_max=3.0)
    adv = torch.tensor([1.0, -0.5, 0.2, 2.0])
    mask = torch.tensor([True, True, True, False])
    torch.testing.assert_close(loss.advantage_weights(adv, mask)[:3], loss.advantage_weights(adv[:3]))
    data = make_data("mlp", 4, policy)
    padded = data.clone()
    padded["sample_mask"] = mask
    torch.testing.assert_close(loss(padded)["loss_ript_cfg"], loss(data[:3])["loss_ript_cfg"])
    assert torch.equal(loss(data)["loss_ript_cfg"], loss(data)["loss_ript_cfg"])  # fixed noise/time: deterministic


@pytest.mark.parametrize("kind,mode", [("mlp", "weighted"), ("mlp", "cfg"), ("pi0", "weighted"), ("pi0", "cfg")])
def test_every_trainable_parameter_gets_a_gradient(kind, mode):
    """What find_unused_parameters=False relies on (wrap_ddp freezes the CFG head in weighted mode, as here)."""
    policy = make_policy(kind, mode)
    loss = RIPTCFGLoss(policy, mode=mode)
    if mode == "weighted" and getattr(policy, "label_embed", None) is not None:
        policy.label_embed.requires_grad_(False)
    data = make_data(kind, 3, policy)
    data["label_drop"] = torch.tensor([True, False, False])  # every label kind present
    data["advantage"] = torch.tensor([[0.5], [1.0], [-1.0]])
    loss(data)["loss_ript_cfg"].backward()
    trainable = [(n, p) for n, p in policy.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None]
    assert trainable and not missing, f"trainable parameters without a gradient: {missing[:5]}"
    if kind == "pi0":  # the structurally unreachable ones are exactly what PI0Actor froze
        frozen = {id(p) for p in policy.unreachable_parameters()}
        assert frozen and all(not p.requires_grad for p in policy.parameters() if id(p) in frozen)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["algo.ema_decay=0.9", "algo.buffer_iterations=2", "env.tasks=[0,1]", "algo.balance_tasks=true",
                                    "algo.anchor_coef=0.5"]],
                         ids=["plain", "average_window_balanced_anchor"])
def test_torchrun_toy_recipe_two_ranks(tmp_path, extra):
    out = tmp_path / "run"
    cmd = [*TORCHRUN, f"--master_port={_free_port()}", str(ROOT / "recipes" / "ript_cfg.py"), "--config-name", "toy",
           f"logging.output_dir={out}", "train.iterations=2", "distributed.backend=gloo", "distributed.timeout_s=60", *extra]  # fmt: skip
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "parameters bit-identical on all 2 ranks" in proc.stdout + proc.stderr
    assert proc.stdout.count("run completed after 2 iterations") == 1  # rank 0 alone reports
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 3  # header + 2 iterations, written once
    assert (out / "checkpoints").is_dir()
    state = torch.load(out / "checkpoints" / "iter_000002" / "trainer.pt", weights_only=False)
    assert len(state["extra"]["sampler_ranks"]) == 2
    assert ("learner_weights" in state["extra"]) == bool(extra)  # the trained copy beside the averaged policy


def _launch_two_ranks(tmp_path: Path, fault: str) -> tuple[subprocess.Popen, subprocess.Popen]:
    """Both ranks started by hand (no torchrun agent to kill the survivor): our code alone must end rank 0."""
    port = _free_port()
    procs = []
    for rank in (0, 1):
        env = {**_env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}  # fmt: skip
        procs.append(subprocess.Popen([PY, __file__, "fault", str(tmp_path), fault], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs[0], procs[1]


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["raise", "hang"])
def test_a_failing_rank_makes_the_other_exit_with_a_clear_error(tmp_path, fault):
    rank0, rank1 = _launch_two_ranks(tmp_path, fault)
    start = time.monotonic()
    try:
        _, err0 = rank0.communicate(timeout=120)
        elapsed = time.monotonic() - start
    finally:
        for p in (rank0, rank1):
            if p.poll() is None:
                p.kill()
            p.communicate()
    assert rank0.returncode != 0
    assert "rank 0/2 failed" in err0 and "other rank" in err0, err0[-2000:]
    if fault == "hang":
        assert "15" in err0  # the configured timeout is named
    assert elapsed < 100


if __name__ == "__main__":
    what, out_dir = sys.argv[1], Path(sys.argv[2])
    if what == "equivalence":
        worker_equivalence(out_dir, sys.argv[3].split(","))
    elif what == "fault":
        worker_fault(out_dir, sys.argv[3])
    else:
        raise SystemExit(f"unknown worker {what!r}: use equivalence or fault")
