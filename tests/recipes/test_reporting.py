"""CSV/wandb-offline logging, videos, plot, eval tables, LR schedule and early stopping."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ript.recipes.training.eval_table import EpisodeResult, write_tables
from ript.recipes.training.logging import MetricLogger
from ript.recipes.training.optim import EarlyStopping, lr_factor, make_scheduler
from ript.recipes.training.plotting import plot_training_curves
from ript.recipes.training.video import FAILURE_RGB, SUCCESS_RGB, compose_frame, write_mp4


def test_csv_has_stable_columns_and_appends_on_resume(tmp_path: Path) -> None:
    log = MetricLogger(tmp_path, columns=["train/success_rate", "eval/success_rate", "loss/total"], progress=False)
    log.log(1, {"train/success_rate": 0.5, "loss/total": 1.0})
    log.log(2, {"train/success_rate": 0.75, "loss/total": 0.5, "eval/success_rate": 1.0, "late/new": 3})
    log.close()
    resumed = MetricLogger(tmp_path, columns=["other"], progress=False)  # header comes from the file
    resumed.log(3, {"train/success_rate": 1.0, "loss/total": 0.25})
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert list(rows[0].keys()) == ["iteration", "train/success_rate", "eval/success_rate", "loss/total"]
    assert [r["iteration"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["eval/success_rate"] == "" and rows[1]["eval/success_rate"] == "1.0"
    png = plot_training_curves(tmp_path / "metrics.csv", tmp_path / "curves.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_non_main_rank_logs_nothing(tmp_path: Path) -> None:
    MetricLogger(tmp_path, is_main=False).log(1, {"a": 1.0})
    assert not (tmp_path / "metrics.csv").exists()


def test_wandb_offline_writes_under_output_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    log = MetricLogger(tmp_path, wandb_mode="offline", project="ript-test", config={"a": 1}, progress=False)
    log.log(1, {"train/success_rate": 0.5})
    log.close()
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())
    assert (tmp_path / "wandb_run_id").read_text().strip() in runs[0].name
    os.environ.pop("WANDB_DIR", None)


def test_video_frames_are_side_by_side_with_coloured_border(tmp_path: Path) -> None:
    a = torch.zeros(3, 16, 20, dtype=torch.uint8)
    b = np.full((16, 12, 3), 100, np.uint8)
    ok = compose_frame([a, b], success=True, border=2)
    bad = compose_frame([a, b], success=False, border=2)
    assert ok.shape == (20, 36, 3)  # 16 + 2*2 high, 20 + 12 + 2*2 wide
    assert tuple(ok[0, 0]) == SUCCESS_RGB and tuple(bad[-1, -1]) == FAILURE_RGB
    assert tuple(ok[10, 2 + 20 + 3]) == (100, 100, 100)
    path = write_mp4([ok] * 5, tmp_path / "v.mp4", fps=5)
    import av

    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 5 and frames[0].shape == ok.shape


def test_eval_tables(tmp_path: Path) -> None:
    res = [EpisodeResult("libero_goal", t, f"task {t}", s, success=(t == 0 or s == 40)) for t in (0, 1) for s in (40, 41)]
    csv_path, md_path = write_tables(res, tmp_path)
    rows = list(csv.DictReader(open(csv_path)))
    assert [(r["task_id"], r["successes"], r["episodes"]) for r in rows] == [("0", "2", "2"), ("1", "1", "2"), ("all", "3", "4")]
    assert "| libero_goal | all | (all tasks) | 4 | 3 | 75.0% |" in md_path.read_text()
    with pytest.raises(ValueError, match="at least one"):
        write_tables([], tmp_path)


def test_lr_schedule_warmup_then_cosine_to_floor() -> None:
    f = [lr_factor(s, schedule="cosine", warmup_steps=2, total_steps=12, min_lr_ratio=0.1) for s in range(14)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(x >= y for x, y in zip(f[2:], f[3:])) and f[12] == pytest.approx(0.1) and f[13] == pytest.approx(0.1)
    assert lr_factor(100, schedule="constant", warmup_steps=2, total_steps=10, min_lr_ratio=0.1) == 1.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, schedule="cosine", warmup_steps=2, total_steps=12, min_lr_ratio=0.1)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)


def test_wsd_schedule_equals_constant_until_its_linear_decay() -> None:
    f = [lr_factor(s, schedule="wsd", warmup_steps=2, total_steps=10, min_lr_ratio=0.0, decay_steps=4) for s in range(11)]
    const = [lr_factor(s, schedule="constant", warmup_steps=2, total_steps=10, min_lr_ratio=0.0) for s in range(11)]
    assert f[:6] == const[:6]  # a snapshot before the decay equals the constant run's
    assert f[6:10] == pytest.approx([1.0, 0.75, 0.5, 0.25]) and f[10] == 0.0
    assert lr_factor(9, schedule="wsd", warmup_steps=0, total_steps=10, min_lr_ratio=0.2, decay_steps=4) == pytest.approx(0.4)
    assert lr_factor(3, schedule="wsd", warmup_steps=0, total_steps=10, min_lr_ratio=0.0) == 1.0  # no decay steps: constant


def test_early_stopping() -> None:
    es = EarlyStopping(patience=2, min_delta=0.05)
    assert es.update(0.2) and not es.should_stop
    assert not es.update(0.22) and not es.should_stop  # below min_delta: no improvement
    assert es.update(0.4)
    assert not es.update(0.4) and not es.update(0.3) and es.should_stop
    restored = EarlyStopping(2, 0.05)
    restored.load_state_dict(es.state_dict())
    assert restored.should_stop and restored.best == 0.4
    assert not EarlyStopping(patience=0).should_stop


def test_weight_ema_warms_up_then_averages_and_leaves_the_model_alone():
    from ript.recipes.training.optim import WeightEMA

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = WeightEMA(model, decay=0.9)
    assert not any(p.requires_grad for p in ema.model.parameters()) and model.weight.requires_grad
    assert ema.current_decay() == pytest.approx(1 / 10)  # warm-up: the first update is mostly the new weights
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)
    assert torch.allclose(ema.model.weight, torch.full((1, 2), 0.9))
    for _ in range(200):
        ema.update(model)
    assert ema.current_decay() == 0.9 and torch.allclose(ema.model.weight, torch.ones(1, 2), atol=1e-6)
    assert torch.equal(model.weight, torch.ones(1, 2))  # the trained model is never touched
    with pytest.raises(ValueError, match="decay must be in"):
        WeightEMA(model, decay=1.0)


def test_weight_ema_can_average_into_an_existing_module_without_warm_up():
    """The acting policy itself holds the average of a training copy: it starts from its own weights."""
    from ript.recipes.training.optim import WeightEMA

    acting, learner = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    with torch.no_grad():
        acting.weight.fill_(0.0)
        learner.weight.fill_(1.0)
    ema = WeightEMA(learner, decay=0.9, average=acting, warmup=False)
    assert ema.model is acting and ema.current_decay() == 0.9
    ema.update(learner)
    assert torch.allclose(acting.weight, torch.full((1, 2), 0.1))  # the start weights keep 90 %
    assert torch.equal(learner.weight, torch.ones(1, 2)) and learner.weight.requires_grad
