"""Atomic checkpoints: complete or absent, never half-written; resume restores state exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from ript.recipes.training import checkpoint as ck
from ript.recipes.training.checkpoint import CheckpointError, Checkpointer, resolve_resume


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    loss = model(torch.randn(5, 3)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def test_save_load_roundtrip_restores_params_optimizer_scheduler_rng(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1, gamma=0.5)
    _train_step(model, opt)
    sched.step()
    ckpt = Checkpointer(tmp_path, keep_last=2)
    path = ckpt.save(1, policy=model, optimizer=opt, scheduler=sched, config_yaml="a: 1\n", metrics={"m": 0.5}, extra={"k": [1, 2]})
    assert path is not None and (path / "meta.json").is_file() and (path / "policy" / ck.POLICY_STATE_FILE).is_file()
    expected_rand = (random.random(), np.random.rand(), torch.rand(1).item())

    model2 = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, 1, gamma=0.5)
    state = Checkpointer.load(ckpt.latest(), policy=model2, optimizer=opt2, scheduler=sched2)
    assert state["iteration"] == 1 and state["extra"] == {"k": [1, 2]} and state["metrics"] == {"m": 0.5}
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    assert sched2.get_last_lr() == sched.get_last_lr()
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected_rand
    # both continue identically
    torch.manual_seed(3)
    _train_step(model, opt)
    torch.manual_seed(3)
    _train_step(model2, opt2)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    ckpt = Checkpointer(tmp_path, keep_last=1)
    first = ckpt.save(1, policy=model, metrics={"x": 1})
    params_before = [p.clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)

    real_save = torch.save

    def crashing_save(obj, f, *a, **k):  # the policy file is written, then the process "dies"
        if str(f).endswith("trainer.pt"):
            Path(f).write_bytes(b"half")
            raise KeyboardInterrupt("simulated crash")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(2, policy=model, metrics={"x": 2})
    monkeypatch.setattr(torch, "save", real_save)

    assert not (tmp_path / "checkpoints" / "iter_000002").exists()
    assert ckpt.latest() == first
    assert json.loads((tmp_path / "checkpoints" / "last.json").read_text())["iteration"] == 1
    restored = _model()
    Checkpointer.load(first, policy=restored)
    for a, b in zip(params_before, restored.parameters()):
        assert torch.equal(a, b)
    # a leftover temp dir (a hard kill skips the cleanup) is ignored and then removed
    (tmp_path / "checkpoints" / ".tmp-iter_000003-1-1").mkdir()
    assert Checkpointer(tmp_path).latest() == first
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_keep_last_prunes_but_keeps_best(tmp_path: Path) -> None:
    model = _model()
    ckpt = Checkpointer(tmp_path, keep_last=2)
    for it in range(1, 6):
        ckpt.save(it, policy=model, is_best=(it == 2))
    names = sorted(p.name for p in ckpt.complete_checkpoints())
    assert names == ["iter_000002", "iter_000004", "iter_000005"]
    assert ckpt.best().name == "iter_000002" and ckpt.latest().name == "iter_000005"


def test_resolve_resume(tmp_path: Path) -> None:
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None  # nothing yet: start fresh
    with pytest.raises(CheckpointError, match="resume"):
        resolve_resume(str(tmp_path / "missing"), tmp_path)
    saved = Checkpointer(tmp_path).save(3, policy=_model())
    assert resolve_resume("auto", tmp_path) == saved
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere") == saved
    assert resolve_resume(str(tmp_path / "checkpoints"), tmp_path / "elsewhere") == saved
    assert resolve_resume(str(saved), tmp_path / "elsewhere") == saved


def test_non_main_rank_writes_nothing(tmp_path: Path) -> None:
    assert Checkpointer(tmp_path, is_main=False).save(1, policy=_model()) is None
    assert not (tmp_path / "checkpoints").exists()
