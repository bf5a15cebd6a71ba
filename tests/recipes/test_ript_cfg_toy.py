"""The recipe end to end on the toy env + MLP policy: outputs, resume equivalence, refusal to overwrite."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "recipes"))

from ript_cfg import main  # noqa: E402

from ript.recipes.training.checkpoint import POLICY_STATE_FILE  # noqa: E402


def _params(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "policy" / POLICY_STATE_FILE, weights_only=True)


def test_resume_gives_the_same_parameters_as_one_run(tmp_path: Path) -> None:
    common = ["--config-name", "toy", "eval.every=2", "checkpoint.every=1", "checkpoint.keep_last=10"]
    one = main([*common, f"logging.output_dir={tmp_path / 'one'}", "train.iterations=4"])
    main([*common, f"logging.output_dir={tmp_path / 'two'}", "train.iterations=2"])
    two = main([*common, f"logging.output_dir={tmp_path / 'two'}", "train.iterations=4", "checkpoint.resume=auto"])
    assert one["iterations"] == two["iterations"] == 4
    a, b = _params(one["last_checkpoint"]), _params(two["last_checkpoint"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the update really changed the policy (the test would pass trivially otherwise)
    first = _params(tmp_path / "two" / "checkpoints" / "iter_000002")
    assert any(not torch.equal(first[k], a[k]) for k in a)
    # the CSV of the resumed run is one table: 4 rows, the same header, rows equal to the single run's
    rows_one = list(csv.DictReader(open(one["metrics_csv"])))
    rows_two = list(csv.DictReader(open(two["metrics_csv"])))
    assert [r["iteration"] for r in rows_two] == ["1", "2", "3", "4"]
    for r1, r2 in zip(rows_one, rows_two):
        for key in ("train/success_rate", "groups/kept", "loss/total", "eval/success_rate"):
            assert r1[key] == r2[key], key
    assert Path(two["plot"]).is_file() and Path(two["plot"]).stat().st_size > 0


def test_existing_run_is_not_overwritten_and_bad_resume_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    main(["--config-name", "toy", f"logging.output_dir={out}", "train.iterations=1"])
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    with pytest.raises(SystemExit) as info:  # same dir, no resume: refuse
        main(["--config-name", "toy", f"logging.output_dir={out}", "train.iterations=2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.resume=auto" in err[0]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(SystemExit) as info:  # resume from a path without checkpoints
        main(["--config-name", "toy", f"logging.output_dir={tmp_path / 'new'}", f"checkpoint.resume={tmp_path / 'nothing'}"])
    assert info.value.code == 2


def test_reference_anchor_runs_and_anchor_all_states_covers_the_uniform_groups(tmp_path: Path) -> None:
    """Same seed, same first collection: without the flag the anchor covers the kept groups' steps only; with it, also the
    steps of the groups dynamic sampling drops (all rollouts agreed)."""
    rows = {}
    for all_states in ("false", "true"):
        out = main(["--config-name", "toy", f"logging.output_dir={tmp_path / all_states}", "train.iterations=2", "algo.anchor_coef=0.5",
                    f"algo.anchor_all_states={all_states}"])  # fmt: skip
        rows[all_states] = list(csv.DictReader(open(out["metrics_csv"])))
        anchors = [float(r["loss/anchor"]) for r in rows[all_states] if r.get("loss/anchor")]
        assert len(anchors) == 2 and all(a > 0 for a in anchors)
    off, on = rows["false"][0], rows["true"][0]
    for key in ("data/env_frames", "groups/kept", "groups/dropped", "data/decision_steps"):  # the same collection
        assert off[key] == on[key], key
    assert int(off["groups/dropped"]) >= 1  # a uniform group exists to widen the anchor with
    assert int(off["data/trained_steps"]) == int(off["data/decision_steps"])  # the kept groups' steps
    assert int(on["data/trained_steps"]) > int(on["data/decision_steps"])  # plus the dropped groups' steps, for the anchor
    assert float(on["loss/anchor"]) != float(off["loss/anchor"])


def test_relabelled_targets_train_and_differ_from_acted_chunks(tmp_path: Path) -> None:
    """algo.target_steps: the update fits the acted noise re-integrated with more steps, so it learns something else."""
    common = ["--config-name", "toy", "train.iterations=2", "eval.every=5"]
    acted = main([*common, f"logging.output_dir={tmp_path / 'acted'}"])
    fine = main([*common, f"logging.output_dir={tmp_path / 'fine'}", "algo.target_steps=20"])
    rows_a = list(csv.DictReader(open(acted["metrics_csv"])))
    rows_f = list(csv.DictReader(open(fine["metrics_csv"])))
    # same seeds: iteration 1 collects the same rollouts (recording the noise draws nothing new) ...
    assert rows_a[0]["train/success_rate"] == rows_f[0]["train/success_rate"] and rows_a[0]["groups/kept"] == rows_f[0]["groups/kept"]
    # ... but trains on other targets
    assert rows_a[0]["loss/fm_mean"] != rows_f[0]["loss/fm_mean"] and float(rows_f[0]["loss/fm_mean"]) > 0
    a, b = _params(acted["last_checkpoint"]), _params(fine["last_checkpoint"])
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_keep_spread_logs_and_checkpoints_the_acting_noise_scale(tmp_path: Path) -> None:
    common = ["--config-name", "toy", "eval.every=5", "checkpoint.every=1", "algo.keep_spread=true", "algo.target_steps=10"]
    out = main([*common, f"logging.output_dir={tmp_path / 'k'}", "train.iterations=2"])
    rows = list(csv.DictReader(open(out["metrics_csv"])))
    scales = [float(r["policy/noise_scale"]) for r in rows]
    drift = [float(r["policy/spread_after_update"]) for r in rows if r["policy/spread_after_update"] not in ("", "nan")]
    assert len(scales) == 2 and drift and all(s > 0 for s in scales) and scales[-1] != 1.0
    resumed = main([*common, f"logging.output_dir={tmp_path / 'k'}", "train.iterations=3", "checkpoint.resume=auto"])
    rows = list(csv.DictReader(open(resumed["metrics_csv"])))
    assert len(rows) == 3 and float(rows[-1]["policy/noise_scale"]) > 0
    state = torch.load(resumed["last_checkpoint"] / "trainer.pt", weights_only=False)
    assert state["extra"]["noise_scale"] == pytest.approx(float(rows[-1]["policy/noise_scale"]))


def test_positive_only_trains_on_the_successes_alone(tmp_path: Path) -> None:
    """algo.positive_only: failed steps leave the buffer (weight 0 anyway), so the update runs fewer minibatches."""
    common = ["--config-name", "toy", "train.iterations=1", "eval.every=5", "optim.minibatch_size=1"]
    rows = {}
    for flag in ("false", "true"):
        out = main([*common, f"logging.output_dir={tmp_path / flag}", f"algo.positive_only={flag}"])
        rows[flag] = list(csv.DictReader(open(out["metrics_csv"])))[0]
    every, pos = rows["false"], rows["true"]
    assert every["data/decision_steps"] == pos["data/decision_steps"]  # same seeds: the same rollouts were kept
    assert float(every["loss/frac_positive"]) < 1.0 and float(pos["loss/frac_positive"]) == 1.0
    assert 0 < int(pos["optim/steps"]) < int(every["optim/steps"])


def _learner(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt / "trainer.pt", weights_only=False)["extra"]["learner_weights"]


def test_weight_average_acts_while_a_copy_trains(tmp_path: Path) -> None:
    """algo.ema_decay: the trained copy learns as the policy would alone; the saved, acting policy is its average."""
    common = ["--config-name", "toy", "train.iterations=1", "eval.every=5"]
    start = main([*common, f"logging.output_dir={tmp_path / 'start'}", "optim.lr=1e-12"])  # the start weights, all but unchanged
    plain = main([*common, f"logging.output_dir={tmp_path / 'plain'}"])
    ema = main([*common, f"logging.output_dir={tmp_path / 'ema'}", "algo.ema_decay=0.9"])
    w0, trained, acting, learner = (_params(start["last_checkpoint"]), _params(plain["last_checkpoint"]),
                                    _params(ema["last_checkpoint"]), _learner(ema["last_checkpoint"]))
    for k in trained:  # same seeds and rollouts: the copy trained exactly as the policy does without an average
        torch.testing.assert_close(learner[k], trained[k], rtol=0, atol=0)
    moved = lambda w: sum(float((w[k] - w0[k]).norm()) for k in w0)  # noqa: E731
    assert 0 < moved(acting) < moved(learner)  # the average lags the trained weights


def test_weight_average_resumes_like_one_run(tmp_path: Path) -> None:
    common = ["--config-name", "toy", "eval.every=2", "checkpoint.every=1", "algo.ema_decay=0.8"]
    one = main([*common, f"logging.output_dir={tmp_path / 'one'}", "train.iterations=3"])
    main([*common, f"logging.output_dir={tmp_path / 'two'}", "train.iterations=1"])
    two = main([*common, f"logging.output_dir={tmp_path / 'two'}", "train.iterations=3", "checkpoint.resume=auto"])
    for read in (_params, _learner):
        a, b = read(one["last_checkpoint"]), read(two["last_checkpoint"])
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_step_window_trains_on_recent_iterations_with_tasks_balanced(tmp_path: Path) -> None:
    """algo.buffer_iterations / algo.balance_tasks: each update sees the kept steps of the last N iterations that kept any."""
    out = main(["--config-name", "toy", f"logging.output_dir={tmp_path / 'w'}", "train.iterations=4", "eval.every=5",
                "env.tasks=[0,1]", "algo.buffer_iterations=2", "algo.balance_tasks=true"])
    rows = list(csv.DictReader(open(out["metrics_csv"])))
    kept = [int(r["data/decision_steps"]) for r in rows]
    window = [n for n in kept if n][-2:]  # the window after the last iteration
    last = rows[-1]
    assert int(last["data/trained_steps"]) == sum(window) + int(last["data/upsampled_steps"])
    assert any(int(r["data/upsampled_steps"]) > 0 for r in rows)  # the tasks' kept counts differed somewhere
    assert any(int(r["data/trained_steps"]) > int(r["data/decision_steps"]) for r in rows[1:])


def test_early_stopping_stops_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Evaluations 0.25, 0.5, 0.5, 0.25 with patience 2: the run stops after iteration 4 of 8, best stays on iteration 2."""
    import json

    from ript.recipes.training import trainer

    scripted = iter([0.25, 0.5, 0.5, 0.25, 1.0, 1.0, 1.0, 1.0])  # the real evaluation runs; its success rate is replaced
    real = trainer.Trainer.evaluate

    def scripted_eval(self, *args, **kwargs):
        return {**real(self, *args, **kwargs), "eval/success_rate": next(scripted)}

    monkeypatch.setattr(trainer.Trainer, "evaluate", scripted_eval)
    out = tmp_path / "run"
    summary = main(["--config-name", "toy", f"logging.output_dir={out}", "train.iterations=8", "eval.every=1",
                    "early_stopping.patience=2", "checkpoint.every=3"])  # fmt: skip
    assert summary["iterations"] == 4
    reason = "early stop: no eval improvement > 0.0 in 2 evaluations"
    assert summary["stopped"] == reason
    assert f"run {reason} after 4 iterations" in capsys.readouterr().out
    assert summary["best_checkpoint"].name == "iter_000002"
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    assert best["iteration"] == 2 and best["metrics"]["eval/success_rate"] == 0.5
    assert summary["last_checkpoint"].name == "iter_000004"  # the stopping iteration is saved though every=3
    rows = list(csv.DictReader(open(summary["metrics_csv"])))
    assert [float(r["eval/success_rate"]) for r in rows] == [0.25, 0.5, 0.5, 0.25]
