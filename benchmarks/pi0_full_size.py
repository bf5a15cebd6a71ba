"""A real-architecture PI0 through the whole ript path, from a config alone (no download).

    .venv/bin/python benchmarks/pi0_full_size.py size=tiny        # the whole path in about 2 minutes
    .venv/bin/python benchmarks/pi0_full_size.py size=full        # lerobot's gemma_2b + gemma_300m (about 17 GiB RSS)

Steps, each in its own process so each peak RSS is its own:
  1. build: PI0 with lerobot's default sizes (`size=full`) or the tiny test sizes, LIBERO features at
     224 px, bfloat16 allocated directly (`bf16_construction`), random weights, PaliGemma's real
     vocabulary (257152) with the small offline LIBERO tokenizer; saved as a lerobot checkpoint with
     normalisation processors (the shipped tiny policy's statistics) and its tokenizer/. The actions
     for a fixed observation and fixed noise are stored beside it.
  2. reload: lerobot's own `PI0Policy.from_pretrained` loads the checkpoint and must give the same
     actions for the same noise.
  3. recipe, twice (policy.gradient_checkpointing false, then true): recipes/ript_cfg.py with
     policy.path=<checkpoint>, policy.freeze=trunk, amp=bf16, LIBERO at 224 px with a short
     env.max_steps, one group of 2 episodes, one optimizer step, one evaluation episode.
     Random weights never succeed, so a group would carry no signal and the update would be
     skipped: this benchmark (only) marks every other finished episode successful before the
     advantage sees it, so the recipe's own update runs.

Printed: parameters (total, trainable with the trunk frozen), build and load seconds, peak RSS of
each step, seconds per decision step (policy call + n_action_steps simulator steps + rendering, one
env) and per update step, with checkpointing as a ratio against without it (same run). `json=<file>`
writes the numbers. Peak RSS is read from /proc (VmHWM, reset around collection and update), so
the update's figure is the update's own, not the loading peak.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "recipes"))

from ript.recipes.training.cli import load_config_or_exit, run_cli, to_dotlist  # noqa: E402
from ript.recipes.training.config import ConfigError  # noqa: E402

SHIPPED = ROOT / "configs" / "pretrained" / "tiny_pi0_libero"
PALIGEMMA_VOCAB = 257152
CHUNK, REPLAN, DENOISE = 50, 5, 10  # rl_training's chunk, replanning and denoising steps
IMAGE = 224
GIB = 2**30
PHASE = "--phase"  # internal: argv[0] of the child step processes (`run_phase`)


@dataclass
class FullSizeConfig:
    size: str = "tiny"  # tiny: test sizes (minutes) | full: lerobot's gemma_2b + gemma_300m
    device: str = "cpu"  # cpu or cuda
    max_steps: int = 10  # env.max_steps of the recipe runs (simulator steps per episode)
    workdir: str | None = None  # where the checkpoint and runs go (default: a temporary directory, removed)
    json: str | None = None  # write the results here
    skip_recipe: bool = False  # build and reload only


def validate(cfg: FullSizeConfig) -> None:
    """Choices and counts, before anything is built."""
    if cfg.size not in ("tiny", "full"):
        raise ConfigError(f"size={cfg.size!r} is not one of ['tiny', 'full']: set size=tiny or size=full")
    if cfg.max_steps < 1:
        raise ConfigError(f"max_steps={cfg.max_steps} must be >= 1")


# --------------------------------------------------------------------------- memory


def peak_rss_gib() -> float:
    """Peak resident set size of this process since start or the last `reset_peak_rss` (Linux VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GIB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB


def reset_peak_rss() -> None:
    """Start a new peak (Linux >= 4.0: writing 5 to clear_refs resets VmHWM); a no-op elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


# --------------------------------------------------------------------------- 1. build


def pi0_config(size: str, device: str) -> Any:
    """A LIBERO-shaped PI0Config (two 224 px cameras, 8-dim state, 7-dim actions) in bfloat16."""
    from ript.algos.tiny_pi0 import make_tiny_pi0_config

    # the sizes come from tiny_pi0_sizes (tiny) or lerobot's defaults (full); the config only sets LIBERO's features
    return make_tiny_pi0_config(chunk_size=CHUNK, n_action_steps=REPLAN, image_size=IMAGE, num_inference_steps=DENOISE,
                                tokenizer_max_length=48, dtype="bfloat16", device=device)


def tiny_spec_for(size: str) -> Any:
    """The TinyPI0Spec of `size` (None at full size: lerobot's gemma_2b + gemma_300m)."""
    from ript.algos.tiny_pi0 import TinyPI0Spec

    return TinyPI0Spec(vocab_size=PALIGEMMA_VOCAB) if size == "tiny" else None


def probe(batch: int = 1) -> tuple[Any, Any]:
    """A fixed observation and fixed noise: the same actions must come back after a reload."""
    import torch
    from tensordict import TensorDict

    g = torch.Generator().manual_seed(0)
    td = TensorDict(
        {"observation": {"image": torch.randint(0, 256, (batch, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8),
                         "wrist_image": torch.randint(0, 256, (batch, 3, IMAGE, IMAGE), generator=g, dtype=torch.uint8),
                         "state": torch.randn(batch, 32, generator=g)},
         "task": ["put the alphabet soup in the basket"] * batch},
        [batch],
    )
    return td, torch.randn(batch, CHUNK, 32, generator=g)


def phase_build(size: str, ckpt: Path, device: str) -> dict[str, Any]:
    """Build PI0 from a config in bf16, save it, and time one action chunk (a child process: its peak RSS is its own)."""
    import torch
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy

    from ript.algos import PI0Actor, bf16_construction, build_libero_tokenizer, load_preprocessor_stats, tiny_pi0_sizes

    reset_peak_rss()
    start = time.perf_counter()
    config = pi0_config(size, device)
    spec = tiny_spec_for(size)
    torch.manual_seed(0)
    with tiny_pi0_sizes(spec), bf16_construction(config):
        policy = PI0Policy(config)
    actor = PI0Actor(policy, tokenizer=build_libero_tokenizer(), tiny_spec=spec, dataset_stats=load_preprocessor_stats(SHIPPED))
    build_s = time.perf_counter() - start
    build_peak = peak_rss_gib()
    total = sum(p.numel() for p in actor.parameters())
    actor.freeze("trunk")
    trainable = sum(p.numel() for p in actor.parameters() if p.requires_grad)
    td, noise = probe()
    actor.eval()
    start = time.perf_counter()
    actions = actor.sample_actions(td.to(device), noise=noise)
    sample_s = time.perf_counter() - start
    start = time.perf_counter()
    actor.save_pretrained(ckpt)
    save_s = time.perf_counter() - start
    torch.save({"actions": actions.cpu()}, ckpt.parent / "reference_actions.pt")
    return {"params_total": total, "params_trainable_trunk_frozen": trainable, "build_s": build_s, "build_peak_rss_gib": build_peak,
            "sample_s": sample_s, "save_s": save_s, "peak_rss_gib": peak_rss_gib(),
            "dtypes": sorted({str(p.dtype) for p in actor.parameters()})}


# --------------------------------------------------------------------------- 2. reload with lerobot's loader


def phase_reload(size: str, ckpt: Path, device: str) -> dict[str, Any]:
    """Reload the saved PI0 with lerobot's own loader and check it acts as the built one did."""
    import torch
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy

    from ript.algos import PI0Actor, bf16_construction, load_tokenizer, tiny_pi0_sizes

    reset_peak_rss()
    start = time.perf_counter()
    config = PreTrainedConfig.from_pretrained(str(ckpt), local_files_only=True)
    config.device = device
    with tiny_pi0_sizes(tiny_spec_for(size)), bf16_construction(config):
        policy = PI0Policy.from_pretrained(str(ckpt), config=config, local_files_only=True)  # lerobot's own loader
    load_s = time.perf_counter() - start
    actor = PI0Actor(policy, tokenizer=load_tokenizer(ckpt / "tokenizer"))
    td, noise = probe()
    actions = actor.sample_actions(td.to(device), noise=noise).cpu()
    reference = torch.load(ckpt.parent / "reference_actions.pt")["actions"]
    diff = float((actions - reference).abs().max())
    return {"load_s": load_s, "peak_rss_gib": peak_rss_gib(), "max_action_diff": diff, "same_actions": bool(torch.allclose(actions, reference, atol=1e-5, rtol=0))}


# --------------------------------------------------------------------------- 3. the recipe


def recipe_overrides(ckpt: Path, out: Path, *, checkpointing: bool, max_steps: int, device: str) -> list[str]:
    """One group of 2 episodes on one env, one optimizer step (2 microbatches of 2 when max_steps gives 2 decision steps)."""
    decisions = -(-max_steps // REPLAN)
    samples = 2 * decisions
    minibatch = min(2, samples)
    return [
        "--config-name", "quick_test", f"policy.path={ckpt}", "policy.freeze=trunk", "amp=bf16", f"train.device={device}",
        f"policy.gradient_checkpointing={str(checkpointing).lower()}", f"policy.chunk_size={CHUNK}", f"policy.n_action_steps={REPLAN}",
        f"policy.num_inference_steps={DENOISE}", f"env.camera_size={IMAGE}", f"env.max_steps={max_steps}", "env.num_envs=1",
        "algo.group_size=2", "algo.contexts_per_iteration=1", "algo.target_groups=1", "algo.max_context_draws=1",
        f"optim.minibatch_size={minibatch}", f"optim.grad_accum_steps={-(-samples // minibatch)}", "optim.epochs=1",
        "train.iterations=1", "eval.init_states=[40]", "eval.episodes=1", "logging.video_every=0", "logging.progress=false",
        f"logging.output_dir={out}",
    ]


def phase_recipe(argv: list[str]) -> dict[str, Any]:
    """Run recipes/ript_cfg.py in this process with alternating outcomes and peak RSS per phase."""
    import ript_cfg

    from ript.recipes.training import trainer

    peaks = {"collect": 0.0, "update": 0.0, "before": 0.0}
    peaks["before"] = peak_rss_gib()

    def measured(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            peaks["before"] = max(peaks["before"], peak_rss_gib())
            reset_peak_rss()
            try:
                return fn(*args, **kwargs)
            finally:
                peaks[name] = max(peaks[name], peak_rss_gib())

        return wrapper

    class AlternatingOutcomes(trainer.GroupLOOAdvantage):
        """Every other finished episode counts as a success: random weights never succeed, and the update needs a mixed group."""

        finished = 0

        def forward(self, batch: Any) -> Any:
            key = ("next", "success")
            done = batch.get(("next", "done")).reshape(*batch.shape, -1).any(-1)
            if done.any():
                success = batch.get(key).clone()
                for index in done.nonzero():
                    success[tuple(index.tolist())] = AlternatingOutcomes.finished % 2 == 0
                    AlternatingOutcomes.finished += 1
                batch.set(key, success)
            return super().forward(batch)

    trainer.GroupLOOAdvantage = AlternatingOutcomes
    trainer.Trainer.collect = measured("collect", trainer.Trainer.collect)
    trainer.update_policy = measured("update", trainer.update_policy)
    start = time.perf_counter()
    summary = ript_cfg.main(argv)
    total_s = time.perf_counter() - start
    with open(summary["metrics_csv"]) as f:
        row = next(csv.DictReader(f))
    steps, updates = float(row["data/env_frames"]), float(row["optim/steps"] or 0)
    return {
        "recipe_s": total_s,
        "decision_steps": steps,
        "s_per_decision_step": float(row["time/collect_s"]) / max(steps, 1.0),
        "optimizer_steps": updates,
        "trained_samples": float(row["data/trained_steps"]),
        "s_per_update_step": float(row["time/update_s"]) / updates if updates else float("nan"),
        "collect_peak_rss_gib": peaks["collect"],
        "update_peak_rss_gib": peaks["update"],
        "peak_rss_before_update_gib": peaks["before"],  # loading the checkpoint and collection
    }


# --------------------------------------------------------------------------- driver


def run_phase(name: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    """One step in a fresh interpreter (its own peak RSS); the child prints its result as the last JSON line."""
    cmd = [sys.executable, __file__, PHASE, name, *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT)
    lines = [line for line in res.stdout.splitlines() if line.startswith("{")]
    if res.returncode != 0 or not lines:
        tail = "\n".join((res.stdout + res.stderr).splitlines()[-30:])
        raise RuntimeError(f"phase {name} failed (exit {res.returncode}):\n{tail}")
    return json.loads(lines[-1])


def child_step(argv: list[str]) -> dict[str, Any]:
    """A step in its own process: `recipe <trainer args...>` or `build|reload <checkpoint> <key=value of the config...>`."""
    name, rest = argv[0], argv[1:]
    if name == "recipe":
        result = phase_recipe(rest)
    else:
        cfg = load_config_or_exit(FullSizeConfig, rest[1:], validate)
        result = (phase_build if name == "build" else phase_reload)(cfg.size, Path(rest[0]), cfg.device)
    print(json.dumps(result))
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == [PHASE]:  # a child step launched by run_phase
        return child_step(argv[1:])
    return run_cli(FullSizeConfig, run_all, argv, validate=validate, description=__doc__)


def run_all(args: FullSizeConfig) -> dict[str, Any]:
    """Build, reload and (unless skip_recipe) the two recipe runs, each in its own process; print the report."""
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix=f"pi0_{args.size}_"))
    work.mkdir(parents=True, exist_ok=True)
    ckpt = work / "checkpoint"
    limit = 3600 if args.size == "full" else 900
    common = to_dotlist(args)
    results: dict[str, Any] = {"size": args.size, "device": args.device, "max_steps": args.max_steps}
    try:
        print(f"[{args.size}] building PI0 (bfloat16, random weights) and saving it to {ckpt} ...", flush=True)
        results["build"] = run_phase("build", [str(ckpt), *common], limit)
        print(f"[{args.size}] reloading with lerobot's PI0Policy.from_pretrained ...", flush=True)
        results["reload"] = run_phase("reload", [str(ckpt), *common], limit)
        if not args.skip_recipe:
            for checkpointing in (False, True):
                name = "recipe_checkpointing" if checkpointing else "recipe"
                print(f"[{args.size}] recipe on LIBERO, policy.gradient_checkpointing={str(checkpointing).lower()} ...", flush=True)
                overrides = recipe_overrides(ckpt, work / name, checkpointing=checkpointing, max_steps=args.max_steps, device=args.device)
                results[name] = run_phase("recipe", overrides, limit)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if not results["reload"]["same_actions"]:
        raise SystemExit(f"the reloaded checkpoint gives other actions (max diff {results['reload']['max_action_diff']:.3g})")
    return results


def report(r: dict[str, Any]) -> None:
    """Print the measurements as the README's table rows."""
    b, l = r["build"], r["reload"]
    print(f"\nPI0 {r['size']} on {r['device']} (bfloat16, 224 px, chunk {CHUNK}, {DENOISE} denoising steps):")
    print(f"  parameters            {b['params_total'] / 1e9:.3f} B total, {b['params_trainable_trunk_frozen'] / 1e6:.1f} M trainable (policy.freeze=trunk)")
    print(f"  build                 {b['build_s']:.1f} s, peak RSS {b['build_peak_rss_gib']:.2f} GiB (save: {b['save_s']:.1f} s, peak {b['peak_rss_gib']:.2f} GiB)")
    print(f"  lerobot reload        {l['load_s']:.1f} s, peak RSS {l['peak_rss_gib']:.2f} GiB; same actions for the same noise: {l['same_actions']} (max diff {l['max_action_diff']:.2g})")
    print(f"  one action chunk      {b['sample_s']:.2f} s (batch 1, outside the recipe)")
    if "recipe" not in r:
        return
    off, on = r["recipe"], r["recipe_checkpointing"]
    print(f"  {'recipe':22s}{'no checkpointing':>18s}{'checkpointing':>16s}{'ratio':>8s}")
    for key, label, fmt in (("s_per_decision_step", "s / decision step", "{:.2f}"), ("s_per_update_step", "s / update step", "{:.2f}"),
                            ("update_peak_rss_gib", "update peak RSS GiB", "{:.2f}"), ("collect_peak_rss_gib", "collect peak RSS GiB", "{:.2f}"),
                            ("peak_rss_before_update_gib", "peak before update GiB", "{:.2f}")):
        ratio = on[key] / off[key] if off[key] else float("nan")
        print(f"  {label:22s}{fmt.format(off[key]):>18s}{fmt.format(on[key]):>16s}{ratio:>8.2f}")
    print(f"  ({off['decision_steps']:.0f} decision steps, {off['trained_samples']:.0f} trained samples in {off['optimizer_steps']:.0f} optimizer step(s) per run)")


if __name__ == "__main__":
    if os.environ.get("MUJOCO_GL") is None:
        os.environ["MUJOCO_GL"] = "egl"
    main()
