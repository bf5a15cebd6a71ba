"""NormStats: lerobot's formulas, openpi/lerobot loaders, and one-line errors on bad files."""

from __future__ import annotations

import json

import pytest
import torch

from ript.envs.normalization import NormStats


def _openpi_dict(state_dim: int = 8, action_dim: int = 7) -> dict:
    g = torch.Generator().manual_seed(3)

    def part(d):
        q01 = -torch.rand(d, generator=g) - 0.1
        return {"mean": torch.randn(d, generator=g).tolist(), "std": (torch.rand(d, generator=g) + 0.05).tolist(),
                "q01": q01.tolist(), "q99": (q01 + torch.rand(d, generator=g) + 0.2).tolist()}

    return {"norm_stats": {"state": part(state_dim), "actions": part(action_dim)}}


def _write(tmp_path, obj, name="norm_stats.json"):
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def test_formulas_match_lerobot_normalizer_including_eps_and_zero_range():
    from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep

    raw = _openpi_dict()["norm_stats"]
    raw["state"]["std"][0] = 0.0  # eps in the denominator
    raw["state"]["q99"][1] = raw["state"]["q01"][1]  # zero quantile range -> eps
    features = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
                "action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))}
    stats = {"observation.state": {k: torch.tensor(v) for k, v in raw["state"].items()},
             "action": {k: torch.tensor(v) for k, v in raw["actions"].items()}}
    x, a = torch.randn(3, 8), torch.randn(3, 7)
    for ours_mode, theirs in (("mean_std", NormalizationMode.MEAN_STD), ("quantile", NormalizationMode.QUANTILES)):
        norm_map = {FeatureType.STATE: theirs, FeatureType.ACTION: theirs}
        ns = NormStats(**{f"{p}_{n}": torch.tensor(raw[q][n]) for p, q in (("state", "state"), ("action", "actions")) for n in ("mean", "std", "q01", "q99")},
                       state_mode=ours_mode, action_mode=ours_mode)
        norm = NormalizerProcessorStep(features=features, norm_map=norm_map, stats=stats)
        unnorm = UnnormalizerProcessorStep(features=features, norm_map=norm_map, stats=stats)
        ref_state = norm._normalize_observation({"observation.state": x}, inverse=False)["observation.state"]
        assert torch.allclose(ns.normalize_state(x), ref_state, rtol=1e-6, atol=1e-6)
        assert torch.allclose(ns.unnormalize_action(a), unnorm._normalize_action(a, inverse=True), rtol=1e-6, atol=1e-6)


def test_from_openpi_json_reads_modes_and_padded_stats(tmp_path):
    data = _openpi_dict(state_dim=32, action_dim=32)  # some checkpoints store padded statistics
    ns = NormStats.from_openpi_json(_write(tmp_path, data), mode="quantile")
    assert ns.state_mode == ns.action_mode == "quantile"
    assert torch.allclose(ns.state_q99, torch.tensor(data["norm_stats"]["state"]["q99"]))
    x = torch.randn(8)
    manual = 2 * (x - ns.state_q01[:8]) / (ns.state_q99[:8] - ns.state_q01[:8]) - 1
    assert torch.allclose(ns.normalize_state(x), manual, atol=1e-6)
    st = data["norm_stats"]["state"]
    mean, std = torch.tensor(st["mean"])[:8], torch.tensor(st["std"])[:8]  # from the file, not from ns
    ms = ns.with_mode("mean_std")
    assert torch.allclose(ms.normalize_state(x), (x - mean) / (std + ns.eps), atol=1e-6)
    assert torch.allclose(ns.normalize_state(x), manual, atol=1e-6)  # the original keeps its mode


@pytest.mark.parametrize(
    "content,match",
    [
        ("{not json", "cannot read"),
        ({"norm_stats": {"state": {"mean": [0.0] * 8, "std": [1.0] * 8}}}, "actions"),
        ({"norm_stats": {"state": {"mean": [0.0] * 8}, "actions": {"mean": [0.0] * 7, "std": [1.0] * 7}}}, "no 'std'"),
        ({"norm_stats": {"state": {"mean": [0.0] * 8, "std": [1.0] * 7}, "actions": {"mean": [0.0] * 7, "std": [1.0] * 7}}}, "different sizes"),
        ({"norm_stats": {"state": {"mean": ["a"] * 8, "std": [1.0] * 8}, "actions": {"mean": [0.0] * 7, "std": [1.0] * 7}}}, "not a list of numbers"),
        ({"norm_stats": {"state": {"mean": [0.0] * 8, "std": [1.0] * 8}, "actions": {"mean": [0.0] * 7, "std": [1.0] * 7}}}, "needs state_q01"),
    ],
)
def test_bad_openpi_files_raise_one_line_errors(tmp_path, content, match):
    with pytest.raises(ValueError, match=match) as info:
        NormStats.from_openpi_json(_write(tmp_path, content), mode="quantile")
    assert "\n" not in str(info.value)


def test_missing_file_and_short_stats(tmp_path):
    with pytest.raises(ValueError, match="cannot read openpi norm stats"):
        NormStats.from_openpi_json(tmp_path / "nope.json")
    ns = NormStats.from_openpi_json(_write(tmp_path, _openpi_dict(state_dim=6)))
    with pytest.raises(ValueError, match="6 dims but the data has 8"):
        ns.normalize_state(torch.zeros(8))


def _save_lerobot_processors(directory, stats, norm_mode):
    """Save PI0-like pre/post processors with lerobot's own code (no tokenizer step: it would need the hub)."""
    from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.processor import (
        AddBatchDimensionProcessorStep,
        NormalizerProcessorStep,
        UnnormalizerProcessorStep,
        make_policy_processor_pipelines,
    )

    mode = NormalizationMode(norm_mode)
    features = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(8,)),
                "action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))}
    norm_map = {FeatureType.VISUAL: NormalizationMode.IDENTITY, FeatureType.STATE: mode, FeatureType.ACTION: mode}
    pre, post = make_policy_processor_pipelines(
        input_steps=[AddBatchDimensionProcessorStep(), NormalizerProcessorStep(features=features, norm_map=norm_map, stats=stats, eps=1e-6)],
        output_steps=[UnnormalizerProcessorStep(features={"action": features["action"]}, norm_map=norm_map, stats=stats)],
    )
    pre.save_pretrained(directory)
    post.save_pretrained(directory)
    return pre, post


@pytest.mark.parametrize("norm_mode,ours", [("MEAN_STD", "mean_std"), ("QUANTILES", "quantile")])
def test_from_lerobot_checkpoint_round_trips_saved_processors(tmp_path, norm_mode, ours):
    raw = _openpi_dict()["norm_stats"]
    stats = {"observation.state": {k: torch.tensor(v) for k, v in raw["state"].items()},
             "action": {k: torch.tensor(v) for k, v in raw["actions"].items()}}
    _, post = _save_lerobot_processors(tmp_path, stats, norm_mode)
    assert (tmp_path / "policy_preprocessor.json").is_file()
    ns = NormStats.from_lerobot_checkpoint(tmp_path)
    assert ns.state_mode == ns.action_mode == ours and ns.eps == pytest.approx(1e-6)
    assert torch.allclose(ns.state_std, stats["observation.state"]["std"])
    # The action map equals lerobot's postprocessor on the same normalised chunk.
    a = torch.randn(1, 7)
    assert torch.allclose(ns.unnormalize_action(a), post(a), atol=1e-6)


def test_bad_lerobot_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="no policy_preprocessor.json"):
        NormStats.from_lerobot_checkpoint(tmp_path)
    raw = _openpi_dict()["norm_stats"]
    stats = {"action": {k: torch.tensor(v) for k, v in raw["actions"].items()}}  # no state statistics
    _save_lerobot_processors(tmp_path, stats, "MEAN_STD")
    with pytest.raises(ValueError, match="observation.state.mean"):
        NormStats.from_lerobot_checkpoint(tmp_path)
    for f in tmp_path.glob("policy_*processor_step_*.safetensors"):
        f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="checkpoint is incomplete"):
        NormStats.from_lerobot_checkpoint(tmp_path)
    (tmp_path / "policy_preprocessor.json").write_text("{")
    with pytest.raises(ValueError, match="cannot read"):
        NormStats.from_lerobot_checkpoint(tmp_path)


def test_processors_written_by_the_actor_load_back(tmp_path):
    """A checkpoint trained here carries its stats as lerobot processors that NormStats reads back."""
    from ript.algos.pi0_actor import save_normalizer_processors

    mean, std = torch.linspace(-1, 1, 8), torch.linspace(0.5, 2, 8)
    amean, astd = torch.linspace(-0.2, 0.3, 7), torch.linspace(0.1, 0.9, 7)
    save_normalizer_processors(tmp_path, {"observation.state": {"mean": mean, "std": std}, "action": {"mean": amean, "std": astd}})
    norm = NormStats.from_lerobot_checkpoint(tmp_path)
    assert torch.allclose(norm.state_mean, mean) and torch.allclose(norm.state_std, std)
    assert torch.allclose(norm.action_mean, amean) and torch.allclose(norm.action_std, astd)
    assert norm.state_mode == "mean_std" and norm.action_mode == "mean_std"
