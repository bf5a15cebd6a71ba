"""`--dry-run`: print the resolved, validated config and the size of the policy it builds, then stop.

Why: a config that quietly builds something else (a random tiny PI0 instead of a 3B
checkpoint) is visible here in a second, before any env worker or download-sized load.
PI0 is built on the meta device (shapes only, no memory, about a second at 3B parameters)
from the checkpoint's config.json, with the same freezing the run applies; no env is
built and nothing is written.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .config import CHECKPOINT_LAYOUT, ConfigError, RIPTConfig, to_yaml


def count_parameters(cfg: RIPTConfig) -> tuple[int, int]:
    """(total, trainable) parameters of the policy `cfg` builds, without allocating its weights."""
    policy = _meta_policy(cfg)
    total = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return total, trainable


def _meta_policy(cfg: RIPTConfig) -> torch.nn.Module:
    from .factories import make_policy

    p = cfg.policy
    if p.kind == "mlp":  # small: build it for real
        return make_policy(cfg, torch.device("cpu"))
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.pi0.modeling_pi0 import PI0Policy

    from ript.algos.pi0_actor import PI0Actor
    from ript.algos.tiny_pi0 import TinyPI0Spec, make_tiny_pi0_config, tiny_pi0_sizes

    from .factories import tiny_spec

    if p.path is not None:
        if not (Path(p.path) / "config.json").is_file():
            raise ConfigError(f"policy.path={p.path} has no config.json: point it at a local lerobot PI0 checkpoint ({CHECKPOINT_LAYOUT})")
        config = PreTrainedConfig.from_pretrained(str(p.path), local_files_only=True)
        spec = TinyPI0Spec.load(p.path)
    else:
        config = make_tiny_pi0_config(chunk_size=p.chunk_size, n_action_steps=p.n_action_steps, image_size=p.tiny.image_size)
        spec = tiny_spec(cfg)
    config.device = "meta"
    with tiny_pi0_sizes(spec), torch.device("meta"):
        actor = PI0Actor(PI0Policy(config), supports_cfg=cfg.algo.mode == "cfg" or p.cfg_conditioning)
    actor.freeze(p.freeze)
    return actor


def print_dry_run(cfg: RIPTConfig) -> None:
    """The config as the run would use it, what policy it means and its parameter count."""
    total, trainable = count_parameters(cfg)  # first: a bad checkpoint path is one error line, nothing else
    print(to_yaml(cfg), end="")
    p = cfg.policy
    if p.kind == "mlp":
        source = "flow-matching MLP policy"
    elif p.path is None:
        source = "randomly initialised tiny PI0 (policy.path is null)"
    else:
        source = f"PI0 checkpoint {Path(p.path)}"
    print(f"policy: {source}")
    print(f"parameters: {total:,} total, {trainable:,} trainable (policy.freeze={p.freeze})")
