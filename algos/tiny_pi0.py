"""The one place that shrinks lerobot's PI0 (tests, demos, CPU experiments).

lerobot 0.6.1's PI0 knows two Gemma sizes ("gemma_2b", "gemma_300m"; its config rejects
other names) and hard-codes a 27-layer SigLIP-So400m vision tower and PaliGemma's
257k-token vocabulary. A PI0 that trains on a CPU in seconds needs all three smaller,
so `tiny_pi0_sizes(spec)` temporarily replaces two names inside
`lerobot.policies.pi0.modeling_pi0` while a model is *built* (or loaded):

- `get_gemma_config`: both the VLM and the action expert get `spec.width`/`spec.depth`,
  8 heads (lerobot's fused attention hard-codes 8 query heads), 1 KV head and a shared
  `spec.head_dim` (the two experts attend jointly, so depth and head size must match);
- `PaliGemmaForConditionalGenerationWithPiGemma`: called with lerobot's fully prepared
  HF config, we shrink its vision tower (width, layers, heads, patch size, projection to
  the Gemma width) and vocabulary, then build lerobot's class unchanged;
- `PiGemmaForCausalLM` (the action expert): only its unused lm_head's vocabulary shrinks.

Outside the `with` block lerobot is untouched (the patch is `unittest.mock.patch`'s,
undone on exit even on error). The spec travels with a checkpoint as `tiny_pi0.json`
next to lerobot's `config.json`; `PI0Actor.from_pretrained` applies it automatically and
`with tiny_pi0_sizes(TinyPI0Spec.load(path)): PI0Policy.from_pretrained(path)` loads a
tiny checkpoint with lerobot's own loader.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any
from unittest import mock

from lerobot.configs import FeatureType, PolicyFeature
from lerobot.policies.pi0 import modeling_pi0
from lerobot.policies.pi0.configuration_pi0 import PI0Config
from lerobot.utils.constants import ACTION, OBS_STATE

TINY_SPEC_FILE = "tiny_pi0.json"
LERO_IMAGE_KEYS = ("observation.images.image", "observation.images.wrist_image")


@dataclass(frozen=True)
class TinyPI0Spec:
    """Sizes of a tiny PI0. Defaults: about 0.3 s forward+backward at batch 8 on a CPU core pair."""

    width: int = 64  # Gemma hidden size (VLM and action expert)
    depth: int = 2  # Gemma layers (both experts)
    mlp_dim: int = 128
    head_dim: int = 16  # 8 query heads x head_dim need not equal width (as in Gemma)
    vision_width: int = 64
    vision_depth: int = 2
    vision_heads: int = 4
    vision_mlp_dim: int = 128
    patch_size: int = 16
    vocab_size: int = 256  # >= the offline LIBERO tokenizer's vocabulary (about 110)

    def __post_init__(self) -> None:
        if self.vision_width % self.vision_heads:
            raise ValueError(f"vision_width {self.vision_width} must be divisible by vision_heads {self.vision_heads}")
        if min(self.width, self.depth, self.mlp_dim, self.head_dim, self.vision_depth, self.patch_size) <= 0:
            raise ValueError(f"all TinyPI0Spec sizes must be positive, got {self}")

    def save(self, directory: str | Path) -> None:
        """Write the spec beside a checkpoint so loading rebuilds the same shapes."""
        (Path(directory) / TINY_SPEC_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> TinyPI0Spec | None:
        """The spec saved in `directory`, or None for a full-size checkpoint."""
        path = Path(directory) / TINY_SPEC_FILE
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{path} has unknown keys {sorted(unknown)}: it was written by a newer version, update ript")
        return cls(**data)


def _gemma_config(spec: TinyPI0Spec) -> modeling_pi0.GemmaConfig:
    return modeling_pi0.GemmaConfig(
        width=spec.width, depth=spec.depth, mlp_dim=spec.mlp_dim, num_heads=8, num_kv_heads=1, head_dim=spec.head_dim
    )


@contextlib.contextmanager
def tiny_pi0_sizes(spec: TinyPI0Spec | None) -> Iterator[None]:
    """Build (or load) lerobot PI0 models with `spec`'s sizes inside this block; no-op for None."""
    if spec is None:
        yield
        return
    original_paligemma = modeling_pi0.PaliGemmaForConditionalGenerationWithPiGemma
    original_expert = modeling_pi0.PiGemmaForCausalLM

    def small_paligemma(config):  # lerobot calls it as cls(config=...)
        vision = config.vision_config
        vision.hidden_size = spec.vision_width
        vision.intermediate_size = spec.vision_mlp_dim
        vision.num_hidden_layers = spec.vision_depth
        vision.num_attention_heads = spec.vision_heads
        vision.patch_size = spec.patch_size
        vision.projection_dim = spec.width
        config.projection_dim = spec.width
        config.text_config.vocab_size = spec.vocab_size
        config._vocab_size = spec.vocab_size  # noqa: SLF001  (lerobot sets it the same way)
        config.image_token_index = spec.vocab_size
        config.text_config.num_image_tokens = (vision.image_size // spec.patch_size) ** 2
        return original_paligemma(config=config)

    def small_expert(config):  # the expert's (unused) lm_head would otherwise hold 257k x width weights
        config.vocab_size = spec.vocab_size
        return original_expert(config=config)

    with (
        mock.patch.object(modeling_pi0, "get_gemma_config", lambda variant: _gemma_config(spec)),
        mock.patch.object(modeling_pi0, "PaliGemmaForConditionalGenerationWithPiGemma", small_paligemma),
        mock.patch.object(modeling_pi0, "PiGemmaForCausalLM", small_expert),
    ):
        yield


def make_tiny_pi0_config(
    *,
    chunk_size: int = 10,
    n_action_steps: int = 5,
    image_size: int = 64,
    action_dim: int = 7,
    state_dim: int = 8,
    num_inference_steps: int = 4,
    tokenizer_max_length: int = 16,
    device: str = "cpu",
    **overrides: Any,
) -> PI0Config:
    """A PI0Config for a tiny LIBERO-shaped PI0: two cameras, 8-dim state, 7-dim actions (padded to 32).

    Build the model under `tiny_pi0_sizes(spec)` (PI0Actor.tiny does both). Feature names follow
    lerobot's LIBERO datasets: observation.images.image (agent view) and ...wrist_image.
    """
    config = PI0Config(
        chunk_size=chunk_size,
        n_action_steps=n_action_steps,
        image_resolution=(image_size, image_size),
        num_inference_steps=num_inference_steps,
        tokenizer_max_length=tokenizer_max_length,
        device=device,
        **overrides,
    )
    config.input_features = {
        **{key: PolicyFeature(type=FeatureType.VISUAL, shape=(3, image_size, image_size)) for key in LERO_IMAGE_KEYS},
        OBS_STATE: PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
    }
    config.output_features = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))}
    return config
