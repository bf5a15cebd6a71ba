"""benchmarks/update_drift.py: variant parsing, fixed draws, and bad settings refused before any work starts."""

import pytest
import torch


def test_variant_parses_types_and_fills_defaults(import_benchmark):
    drift = import_benchmark("update_drift")
    v = drift.parse_variant("lr=1e-5,epochs=4,temperature=0.25")
    assert v["lr"] == 1e-5 and v["epochs"] == 4 and isinstance(v["epochs"], int) and v["temperature"] == 0.25
    assert v["w_max"] == drift.DEFAULTS["w_max"] and v["anchor"] == 0.0


@pytest.mark.parametrize("spec, message", [
    ("epochs=2", "set lr"),
    ("lr=1e-5,beta=3", "is not key=value with a key in"),
    ("lr=fast", "is not a float"),
    ("lr=1e-5,epochs=2.5", "is not a int"),
])
def test_bad_variant_is_named(import_benchmark, spec, message):
    with pytest.raises(ValueError, match=message):
        import_benchmark("update_drift").parse_variant(spec)


def test_draws_are_the_same_for_every_policy_and_leave_the_global_rng_alone(import_benchmark):
    draws = import_benchmark("update_drift").draws
    torch.manual_seed(3)
    expected_next = torch.rand(1)
    torch.manual_seed(3)
    a, b = draws(5, (10, 32), 2, seed=7), draws(5, (10, 32), 2, seed=7)
    assert torch.rand(1) == expected_next
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], a[1][0]) and a[0][1].min() > 0 and a[0][1].max() < 1


@pytest.mark.parametrize("argv, message", [
    (["--variants", "epochs=2"], "set lr"),
    (["--frames", "0"], "--frames and --draws must be >= 1"),
    (["--checkpoint", "configs"], "has no bc_config.json"),
    (["--dataset", "/nonexistent/demos"], "write it with `python recipes/collect_demos.py --out /nonexistent/demos`"),
])
def test_bad_settings_fail_before_any_work(import_benchmark, capsys, argv, message):
    with pytest.raises(SystemExit):
        import_benchmark("update_drift").main(argv)
    assert message in capsys.readouterr().err


def test_missing_saved_iteration_is_named(import_benchmark, capsys, tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "info.json").write_text("{}")
    (tmp_path / "ript_episodes.json").write_text("[]")
    with pytest.raises(SystemExit):
        import_benchmark("update_drift").main(["--dataset", str(tmp_path), "--data", str(tmp_path / "gone.pt")])
    assert "drop --data to collect an iteration" in capsys.readouterr().err
