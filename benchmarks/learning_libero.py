"""Learning check on real LIBERO: RIPT-CFG raises the shipped tiny PI0's success, on a CPU.

Start: the behaviour-cloned tiny PI0 shipped in configs/pretrained/ (scripted demos of
three tasks from three suites; `recipes/collect_demos.py` + `recipes/bc_pretrain.py`).
Then RIPT-CFG on its own rollouts (beside replayed expert demos: --demo-replay, 0 for none):

- one LIBERO worker per task (ParallelEnv, each in its own suite) with the PI0 transforms,
  driven by a torchrl Collector;
- every iteration queues `groups_per_task` groups of K episodes per task, each group from
  one training init state (0-39); leave-one-out advantages (GroupLOOAdvantage), groups
  whose K outcomes agree are dropped; kept decision steps go to the replay buffer
  (with --anchor-all-states the dropped groups' steps go there too, for the anchor only);
- epochs x minibatches of RIPTCFGLoss (weighted or cfg) with AdamW and clipping
  (`ript.algos.rollout.update_policy`, the recipe's own update); --positive-only trains on
  the successes' steps alone (filtered self-imitation), --demo-replay N adds N expert demos
  per task to every iteration's steps (advantage +1), drawn among the training init states
  the checkpoint was cloned on; --buffer-iterations N keeps the own kept steps of the last N
  iterations (the demos are drawn afresh beside them); --balance-tasks gives every task's own steps
  the same share of that window; --ema-decay D acts and evaluates with an
  exponential average of the trained weights (the start policy's own weights at first);
- held-out evaluation: init states 40-49 (never in a demo nor in RIPT's groups), each
  `eval_repeats` times: 50 episodes per task at the start, every `eval_every` iterations
  and at the end. Training stops before an iteration of average length would take the RIPT
  time (collection + update, evaluation excluded) past `minutes`.

Prints success per task and iteration, writes <out>/learning_libero.json and .png
(and copies both to benchmarks/results/ with --save-results). After every iteration a
checkpoint (policy, optimizer, generators, results so far) lands atomically in
<out>/checkpoints/: a run stopped by a crash or a reset machine goes on with the same
command plus --resume, and --resume with a larger --minutes/--max-iterations extends a
finished run.

    .venv/bin/python benchmarks/learning_libero.py --minutes 60 --save-results
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from tensordict import TensorDict

import ript.envs  # noqa: F401  (MUJOCO_GL before mujoco loads)
from ript.algos import GroupLOOAdvantage, RIPTCFGLoss, steps_with_weight
from ript.algos.pi0_actor import PI0Actor
from ript.algos.policy import evaluating
from ript.algos.rollout import SpreadKeeper, StepWindow, make_replay_buffer, refill_replay_buffer, relabel_chunks, update_policy
from ript.envs import NormStats
from ript.recipes.bc_pretrain import BCConfig, demo_info, load_demos
from ript.recipes.common.multitask import TaskWorkers, draw_group_starts, open_bc_checkpoint
from ript.recipes.common.checkpoint import Checkpointer, write_json_atomic
from ript.recipes.common.cli import dataclass_parser
from ript.recipes.common.optim import WeightEMA
from ript.recipes.common.factories import stored_keys

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = "configs/pretrained/tiny_pi0_libero"


@dataclass
class LearnConfig:
    """Defaults are the settings of the README's LIBERO result: successes only, a weight-averaged acting policy, own successes kept
    over 10 iterations with each task given an equal share, every cloned demo replayed each iteration."""

    checkpoint: str = DEFAULT_CHECKPOINT
    out: str = "runs/learning_libero"
    tasks: list[str] = field(default_factory=list)  # a subset of the checkpoint's tasks (e.g. one, to rule out interference); empty = all
    train_init_states: list[int] = field(default_factory=lambda: list(range(40)))
    eval_init_states: list[int] = field(default_factory=lambda: list(range(40, 50)))
    eval_repeats: int = 5  # 10 held-out init states x 5 = 50 episodes per task
    eval_every: int = 0  # iterations between held-out evaluations (0: start and end only)
    minutes: float = 60.0  # RIPT budget (collection + update); evaluation not counted
    max_iterations: int = 100
    mode: str = "weighted"
    group_size: int = 4
    groups_per_task: int = 4
    lr: float = 1e-4
    epochs: int = 2
    minibatch_size: int = 32
    buffer_iterations: int = 10  # train on the policy's own kept steps of the last N iterations that kept any (1 = on-policy; >1 as AWR's FIFO buffer)
    balance_tasks: bool = True  # upsample each task's own steps in the window to the task with the most (balance_by_key): every task gets an equal share
    ema_decay: float = 0.99  # > 0: a copy trains and the acting (and evaluated) policy is its weight average (e.g. 0.995); 0 = acts as trained
    temperature: float = 4.0
    w_max: float = 20.0
    positive_only: bool = True  # weighted mode: failures get weight 0 (filtered self-imitation; RIPTCFGLoss positive_only)
    demo_replay: int = 15  # expert demos per task replayed beside every iteration's own steps (advantage +1, RLPD-style); 0 = off
    demo_dataset: str = ""  # the LeRobotDataset they come from (empty: the one the checkpoint was cloned on)
    anchor: float = 0.0  # RIPTCFGLoss anchor_coef: pull towards the start policy's samples (frozen copy); 0 = off
    anchor_all_states: bool = False  # anchor on every collected step, also of all-fail/all-success groups (needs --anchor > 0)
    target_steps: int = 0  # train on the acted noise re-integrated with this many Euler steps (relabel_chunks); 0 = on the acted chunks
    keep_spread: bool = False  # after every update, rescale the acting noise so the action spread stays the start's (match_action_spread)
    freeze: str = "none"  # part of PI0 RIPT leaves as cloned: "vision" (image encoder) or "trunk" (whole VLM: only the action expert learns)
    p_uncond: float = 0.1
    guidance: float = 1.5
    seed: int = 0
    reuse_start: str = ""  # a learning_libero.json from the same checkpoint, seed and held-out states: reuse its start evaluation
    resume: bool = False  # continue the run in --out from its last complete iteration (same settings; --minutes/--max-iterations may grow)
    save_results: bool = False


# settings a resumed run may change: its budget and reporting, not what it measures or how it learns
RESUMABLE_CHANGES = ("resume", "minutes", "max_iterations", "eval_every", "save_results", "reuse_start")
# settings added after runs were already stopped, with the value that reproduces how those runs went (not today's default)
BEFORE_IT_EXISTED = {"balance_tasks": False}


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for i, task in enumerate(result["tasks"]):
        color = f"C{i}"
        its = [p["iteration"] for p in result["iterations"]]
        ax.plot(its, [p["train_success"][task] for p in result["iterations"]], color=color, alpha=0.35, label=f"{task} (rollouts)")
        ev = result["evals"]
        ax.plot([e["iteration"] for e in ev], [e["success"][task] for e in ev], "o-", color=color, label=f"{task} (held-out, 50 eps)")
    ax.set_xlabel("RIPT-CFG iteration")
    ax.set_ylabel("success rate")
    ax.set_ylim(0, 1)
    ax.set_title("RIPT-CFG from the shipped tiny PI0 (CPU)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def reused_start(cfg: LearnConfig, tasks: list[str]) -> dict[str, float]:
    """The start evaluation of an earlier run, if it measured the same thing (same checkpoint, seed, held-out episodes).

    Evaluation is deterministic for a seed, and it is the slowest part on a CPU (about 25 minutes for 50
    episodes of three tasks): reusing it lets a second RIPT setting start from the same, already measured policy.
    A run on a subset of those tasks (--tasks) reuses their numbers: each task's episodes are its own held-out init
    states, so the measurement is the same one (its sampling noise draws may differ, not what is measured).
    """
    prev = json.loads(Path(cfg.reuse_start).read_text())
    same = ("checkpoint", "seed", "eval_init_states", "eval_repeats")
    diff = [k for k in same if prev["config"][k] != getattr(cfg, k)]
    missing = [t for t in tasks if t not in prev["tasks"]]
    if diff or missing:
        reason = f"its {diff} differ from this run's" if diff else f"its tasks lack {missing}"
        raise SystemExit(f"--reuse-start {cfg.reuse_start}: {reason}; drop --reuse-start to evaluate afresh")
    return {t: prev["evals"][0]["success"][t] for t in tasks}


def stopped_run(cfg: LearnConfig) -> Path | None:
    """The last complete checkpoint of the run in --out to resume (None: start afresh); refuses what would lose data.

    A fresh run into an --out that already holds results would overwrite them; a resume with other settings
    would splice two different experiments into one curve. Both are one-line errors instead.
    """
    out = Path(cfg.out)
    results = out / "learning_libero.json"
    if not cfg.resume:
        if results.is_file():
            raise SystemExit(f"--out {out} already holds a run: continue it with --resume or choose a new --out")
        return None
    latest = Checkpointer(out, is_main=False).latest()
    if latest is None or not results.is_file():
        raise SystemExit(f"--resume: {out} holds no checkpoint of a stopped run; drop --resume to start afresh")
    saved = json.loads(results.read_text())["config"]
    diff = sorted(k for k, v in asdict(cfg).items() if k not in RESUMABLE_CHANGES and saved.get(k, BEFORE_IT_EXISTED.get(k)) != v)
    if diff:
        raise SystemExit(f"--resume: {diff} differ from the stopped run's (in {results}); pass the same settings")
    return latest


def replay_init_states(train_states: list[int], dataset_states: set[int],
                       cloned_states: list[int] | dict[str, list[int]]) -> list[int]:
    """The init states whose demos may be replayed: training states the dataset holds and the checkpoint was cloned on.

    `cloned_states` is one list for every task, or {task: states} (a checkpoint's `cloned_init_states`):
    a state any task was cloned on is drawn, and `expert_steps` then leaves out the other tasks' demos of it.

    Why: replay is the policy's own prior data (RLPD-style). Demos of other states would be new supervision,
    and a gain could not be told apart from more behaviour cloning.
    """
    cloned = {s for states in cloned_states.values() for s in states} if isinstance(cloned_states, dict) else set(cloned_states)
    return [s for s in train_states if s in dataset_states and s in cloned]


def expert_steps(actor: PI0Actor, dataset: str, bc_config: dict[str, Any], init_states: list[int], norm: NormStats,
                 cloned: dict[str, list[int]] | None = None) -> TensorDict:
    """The demos of `init_states` at the policy's decision steps, shaped like kept rollout steps.

    Every task's demo of each state is taken, unless `cloned` ({task: init states}, what the
    checkpoint was cloned on) leaves it out.

    Why: replayed beside the policy's own steps (RLPD's symmetric sampling), they hold the update on the
    behaviour the policy was cloned from. Each gets advantage +1 (a sure success) and a full action mask.
    `norm` is the policy's own normalisation: a demo dataset other than the one it was cloned on has other
    statistics, and normalising with those would hand the update shifted, rescaled targets.
    """
    demos, _, _ = load_demos(BCConfig(dataset=dataset, repo_id=bc_config["repo_id"], demo_init_states=init_states,
                                      chunk_size=actor.chunk_size), actor, stride=int(bc_config["n_action_steps"]), norm=norm,
                              allowed=cloned)
    n = demos.shape[0]
    demos.set("advantage", torch.ones(n, 1))
    demos.set("episode_return", torch.ones(n, 1))
    demos.set("informative", torch.ones(n, 1, dtype=torch.bool))
    return demos


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = dataclass_parser(LearnConfig, __doc__.splitlines()[0])
    cfg = LearnConfig(**vars(parser.parse_args(argv)))
    if cfg.mode not in ("weighted", "cfg"):
        parser.error(f"--mode {cfg.mode}: use weighted or cfg")
    if cfg.positive_only and cfg.mode != "weighted":
        parser.error("--positive-only applies to --mode weighted only; pass --no-positive-only with --mode cfg")
    if cfg.demo_replay < 0:
        parser.error("--demo-replay must be >= 0 (0 trains on the policy's own rollouts only)")
    if cfg.buffer_iterations < 1:
        parser.error("--buffer-iterations must be >= 1 (1 trains on the latest iteration only)")
    if not 0.0 <= cfg.ema_decay < 1.0:
        parser.error(f"--ema-decay must be in [0, 1) (0 acts with the trained weights), got {cfg.ema_decay}")
    if cfg.group_size < 2:
        parser.error("--group-size must be >= 2 (leave-one-out advantages need two rollouts)")
    if cfg.anchor_all_states and cfg.anchor <= 0:
        parser.error("--anchor-all-states needs --anchor > 0 (it widens the anchor to every collected step)")
    if cfg.freeze not in PI0Actor.FREEZE_PARTS:
        parser.error(f"--freeze {cfg.freeze}: use one of {', '.join(PI0Actor.FREEZE_PARTS)}")
    if cfg.target_steps < 0:
        parser.error("--target-steps must be >= 0 (0 trains on the acted chunks)")
    if cfg.demo_replay and cfg.target_steps:
        parser.error("--demo-replay cannot be combined with --target-steps (demos have no acting noise to re-integrate); pass --demo-replay 0")
    if set(cfg.train_init_states) & set(cfg.eval_init_states):
        parser.error("--eval-init-states must not overlap --train-init-states (held-out evaluation)")
    ckpt, bc = open_bc_checkpoint(parser, cfg.checkpoint)
    tasks, camera_size = list(bc["tasks"]), int(bc["camera_size"])
    if cfg.tasks:
        unknown = [t for t in cfg.tasks if t not in tasks]
        if unknown:
            parser.error(f"--tasks {' '.join(unknown)}: not among the checkpoint's tasks {tasks}")
        tasks = [t for t in tasks if t in cfg.tasks]

    demo_dataset = cfg.demo_dataset or bc["config"]["dataset"]
    if cfg.demo_replay and not (Path(demo_dataset) / "meta").is_dir():
        parser.error(f"--demo-replay: no LeRobotDataset at {demo_dataset}; pass --demo-dataset (written by recipes/collect_demos.py)")

    demo_states = []
    if cfg.demo_replay:
        held = {ep["init_state_id"] for ep in demo_info(BCConfig(dataset=demo_dataset))["episodes"]}
        cloned = bc.get("cloned_init_states") or bc["config"].get("demo_init_states", cfg.train_init_states)
        demo_states = replay_init_states(cfg.train_init_states, held, cloned)
        if not demo_states:
            parser.error(f"--demo-replay: {demo_dataset} holds no demo of a training init state the checkpoint was cloned on; "
                         "collect them with recipes/collect_demos.py or pass --demo-replay 0")

    resume_from = stopped_run(cfg)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(2)
    actor = PI0Actor.from_pretrained(ckpt, device="cpu", supports_cfg=cfg.mode == "cfg",
                                     default_guidance=cfg.guidance if cfg.mode == "cfg" else None)
    actor.freeze(cfg.freeze)
    actor.record_noise = cfg.target_steps > 0  # lerobot's own noise draws, kept for relabel_chunks
    norm = NormStats.from_lerobot_checkpoint(ckpt)
    runner = TaskWorkers(actor, norm, tasks, camera_size, seed=cfg.seed)

    def evaluate(iteration: int, ript_minutes: float) -> dict[str, Any]:
        """One held-out evaluation entry: success per task, and successes per init state (out of eval_repeats)."""
        results = runner.evaluate_episodes(cfg.eval_init_states, cfg.eval_repeats)
        return {"iteration": iteration, "success": runner.success_by_task(results),
                "successes_by_state": runner.successes_by_state(results), "ript_minutes": round(ript_minutes, 2)}

    advantage = GroupLOOAdvantage(cfg.group_size, drop_uninformative=not cfg.anchor_all_states)
    reference = copy.deepcopy(actor) if cfg.anchor > 0 else None
    # with --ema-decay a copy trains and `actor` (what acts and is evaluated) holds its weight average
    learner = copy.deepcopy(actor) if cfg.ema_decay > 0 else actor
    ema = WeightEMA(learner, cfg.ema_decay, average=actor, warmup=False) if cfg.ema_decay > 0 else None
    after_step = None if ema is None else (lambda finite: ema.update(learner) if finite else None)  # average each taken step
    loss_module = RIPTCFGLoss(learner, mode=cfg.mode, temperature=cfg.temperature, w_max=cfg.w_max, positive_only=cfg.positive_only,
                              p_uncond=cfg.p_uncond, reference=reference, anchor_coef=cfg.anchor, anchor_num_steps=cfg.target_steps or None)
    optimizer = torch.optim.AdamW([p for p in learner.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    buffer = make_replay_buffer(len(tasks) * (cfg.buffer_iterations * cfg.groups_per_task * cfg.group_size * 80 + cfg.demo_replay * 40))
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = torch.Generator().manual_seed(cfg.seed + 1)
    demo_rng = torch.Generator().manual_seed(cfg.seed + 3)  # its own stream: the groups' init states stay those of a run without demos
    balance_rng = torch.Generator().manual_seed(cfg.seed + 5)  # likewise for --balance-tasks' draws
    window = StepWindow(cfg.buffer_iterations, balance_key=("observation", "language_tokens") if cfg.balance_tasks else None,
                        generator=balance_rng)  # the policy's own kept steps of recent iterations
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda msg: print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)  # noqa: E731
    checkpointer = Checkpointer(out, keep_last=1)

    def save_policy(path: Path) -> None:
        """The policy with the checkpoint's bc_config.json: usable as another run's --checkpoint."""
        actor.save_pretrained(path)
        shutil.copy2(ckpt / "bc_config.json", path / "bc_config.json")

    iterations: list[dict[str, Any]] = []
    ript_s = 0.0
    if resume_from is not None:  # after the reference copy: the anchor still pulls towards the start policy
        state = Checkpointer.load(resume_from, policy=learner, optimizer=optimizer)["extra"]
        if ema is not None:
            actor.load_state_dict(state["acting_weights"])
        evals, iterations, ript_s = state["evals"], state["iterations"], state["ript_s"]
        for g, name in ((gen, "gen"), (rng, "rng"), (demo_rng, "demo_rng"), (balance_rng, "balance_rng")):
            if name in state:  # balance_rng: absent from checkpoints written before --balance-tasks
                g.set_state(state[name])
        actor.noise_scale = state["noise_scale"]
        log(f"resumed from {resume_from}: {len(iterations)} iterations, {ript_s / 60:.1f} RIPT min done "
            "(the replay window restarts empty; env draws differ from an unbroken run)")
    else:
        t_eval = time.perf_counter()
        evals = [{"iteration": 0, "success": reused_start(cfg, tasks), "ript_minutes": 0.0} if cfg.reuse_start else evaluate(0, 0.0)]
        log(f"start (held-out, {len(cfg.eval_init_states) * cfg.eval_repeats} eps/task, {time.perf_counter() - t_eval:.0f}s): "
            + ", ".join(f"{t} {r:.2f}" for t, r in evals[0]["success"].items()))

    def snapshot(**extra: Any) -> dict[str, Any]:
        """Write the json as it stands (after every evaluation and iteration: a stopped run keeps its numbers)."""
        result = {"config": asdict(cfg), "tasks": tasks, "evals": evals, "iterations": iterations, "finished": False, **extra}
        write_json_atomic(out / "learning_libero.json", result)  # a crash mid-write keeps the previous file
        return result

    def save_checkpoint() -> None:
        """Everything a resumed run needs to go on as this one would (but the replay window and the env draws)."""
        checkpointer.save(len(iterations), policy=learner, optimizer=optimizer, extra={
            "evals": evals, "iterations": iterations, "ript_s": ript_s, "noise_scale": actor.noise_scale,
            "gen": gen.get_state(), "rng": rng.get_state(), "demo_rng": demo_rng.get_state(), "balance_rng": balance_rng.get_state(),
            **({"acting_weights": actor.state_dict()} if ema is not None else {})})

    if resume_from is None:
        save_checkpoint()  # iteration 0: a run stopped during its first iteration keeps its start evaluation
    snapshot()
    spread = SpreadKeeper(seed=cfg.seed) if cfg.keep_spread else None
    for it in range(len(iterations) + 1, cfg.max_iterations + 1):
        if iterations and ript_s * (1 + 1 / len(iterations)) > cfg.minutes * 60:
            break  # another iteration of average length would overrun the budget ("up to `minutes`")
        t0 = time.perf_counter()
        picks = draw_group_starts(cfg.train_init_states, cfg.groups_per_task, len(tasks), rng)
        advantage.clear()
        advantage.reset_stats()
        kept = []

        def feed(batch):
            res = advantage(batch)
            if res is not None:
                kept.append(res)

        with evaluating(actor):
            results = runner.run(picks, cfg.group_size, on_batch=feed)
        t_collect = time.perf_counter() - t0
        stats = advantage.stats()
        metrics: dict[str, float] = {}
        if kept:
            own = torch.cat(kept, 0)
            own = own.select(*stored_keys(actor, own), strict=False)
            own = steps_with_weight(own, positive_only=cfg.positive_only, anchor_coef=cfg.anchor)
            if cfg.target_steps:
                own = relabel_chunks(actor, own, cfg.target_steps).exclude("action_noise")
            if cfg.demo_replay:  # own steps train on their whole chunk, as without demos
                own.set("action_mask", torch.ones(own.shape[0], actor.chunk_size, dtype=torch.bool))
            window.add(own)
        data, upsampled = window.gather()
        if cfg.demo_replay:  # fresh expert demos every iteration, from training init states only
            starts = torch.randperm(len(demo_states), generator=demo_rng)[: cfg.demo_replay]
            demos = expert_steps(actor, demo_dataset, bc["config"], [demo_states[int(i)] for i in starts], norm,
                                 bc.get("cloned_init_states"))
            if data is None:  # no own steps kept (yet): the demos alone
                data = demos.select(*stored_keys(actor, demos))
            else:
                shared = [k for k in data.keys(True, True) if k in demos.keys(True, True)]  # not task_id: the update never reads it
                data = torch.cat([data.select(*shared), demos.select(*shared)], 0)
        if data is not None:
            if spread is not None and not spread.ready:  # the start policy's spread on iteration 1's observations
                spread.set_probe(actor, data)
            refill_replay_buffer(buffer, data)
            metrics = update_policy(loss_module, buffer, optimizer, epochs=cfg.epochs, minibatch_size=cfg.minibatch_size,
                                    max_grad_norm=1.0, generator=gen, step_callback=after_step)
        if spread is not None and spread.ready:
            metrics["spread_before"], metrics["spread"] = spread.restore(actor)
        step_s = time.perf_counter() - t0
        ript_s += step_s
        point = {"iteration": it, "group_init_states": picks,
                 "train_success": runner.success_by_task(results), "kept_groups": stats.get("kept_groups", 0),
                 "dropped_groups": stats.get("dropped_groups", 0), "kept_steps": stats.get("kept_steps", 0),
                 "trained_steps": data.shape[0] if data is not None else 0, "upsampled_steps": upsampled,
                 "anchor_only_steps": stats.get("uninformative_steps", 0),
                 "loss": metrics.get("loss_mean", metrics.get("fm_loss_mean")), "weight_max": metrics.get("weight_max"),
                 "fm_loss": metrics.get("fm_loss_mean"), "anchor_loss": metrics.get("anchor_loss"),
                 "noise_scale": actor.noise_scale, "spread_after_update": metrics.get("spread_before"),
                 "collect_s": round(t_collect, 1), "update_s": round(step_s - t_collect, 1), "ript_minutes": round(ript_s / 60, 2)}
        iterations.append(point)
        save_checkpoint()  # before the json: results never run ahead of what a resume can restore
        snapshot()
        save_policy(out / "latest_policy")  # as another run's --checkpoint
        log(f"it {it:2d} rollouts " + ", ".join(f"{t} {r:.2f}" for t, r in point["train_success"].items())
            + (f" | spread x{metrics['spread_before']:.3f} -> noise x{actor.noise_scale:.3f}" if spread is not None and spread.ready else "")
            + f" | kept {point['kept_groups']} dropped {point['dropped_groups']} steps {point['kept_steps']} "
            f"| collect {t_collect:.0f}s update {step_s - t_collect:.0f}s | {ript_s / 60:.1f} RIPT min")
        if cfg.eval_every and it % cfg.eval_every == 0:
            evals.append(evaluate(it, ript_s / 60))
            save_checkpoint()
            snapshot()
            log(f"eval it {it}: " + ", ".join(f"{t} {r:.2f}" for t, r in evals[-1]["success"].items()))
    if evals[-1]["iteration"] != len(iterations):
        evals.append(evaluate(len(iterations), ript_s / 60))
        save_checkpoint()  # a resume that extends this run keeps this evaluation
    runner.close()
    start, end = evals[0]["success"], evals[-1]["success"]
    gain = sum(end[t] - start[t] for t in tasks) / len(tasks)
    result = snapshot(finished=True, mean_gain=gain, passes=gain >= 0.20 and all(end[t] >= start[t] for t in tasks))
    for t in tasks:
        by_state = " ".join(str(n) for n in evals[-1]["successes_by_state"][t].values())
        log(f"{t}: {start[t]:.2f} -> {end[t]:.2f} ({end[t] - start[t]:+.2f}); end successes per held-out state: {by_state}")
    log(f"mean gain {gain:+.3f} over {len(iterations)} iterations, {ript_s / 60:.1f} RIPT minutes: "
        f"{'PASS' if result['passes'] else 'FAIL'} (target +0.20, no task worse)")
    plot(result, out / "learning_libero.png")
    save_policy(out / "final_policy")
    if cfg.save_results:
        results_dir = REPO / "benchmarks" / "results"
        results_dir.mkdir(parents=True, exist_ok=True)
        for name in ("learning_libero.json", "learning_libero.png"):
            shutil.copy2(out / name, results_dir / name)
    return result


if __name__ == "__main__":
    main()
