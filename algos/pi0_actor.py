"""PI0Actor: lerobot's PI0Policy as a TorchRL policy with a per-sample loss and optional CFG.

Why a wrapper and not a re-implementation: the network, its embeddings, the attention
masks, the denoising step and the checkpoint format stay lerobot's (`PI0Policy`,
`PI0Pytorch`). This file only

- converts a TensorDict of PI0-transformed observations (uint8 images, normalised and
  padded state, language tokens or "task" strings) to lerobot's batch format;
- samples a normalised, padded chunk [B, chunk_size, 32] under no_grad, with optional
  fixed noise, and writes "action_chunk" and "action" (the first n_action_steps): it is
  a `TensorDictModuleBase`, so `torchrl.collectors.Collector(policy=actor)` takes it;
- computes the flow-matching loss per sample, masking chunk steps that were not
  executed (`td["action_mask"]`) and the padded action dims;
- adds CFG (CFGRL, Frans et al. 2025) through one contained extension (below);
- loads/saves lerobot checkpoints from/to local directories (no downloads).

CFG extension. An optimality label (0 unconditional, 1 positive, 2 negative) is embedded
by `label_embed` (nn.Embedding(3, expert width), zero-initialised, row 0 fixed at zero)
and added to every action token of the action expert's input: a forward hook on
`PI0Pytorch.action_time_mlp_out` (the last layer of lerobot's action-time MLP in
`embed_suffix`) adds `label_embed(label)`. At init every label gives the pretrained
model's output exactly. Sampling with guidance w runs lerobot's `denoise_step` twice per
Euler step on the shared prefix cache: v = v_uncond + w * (v_pos - v_uncond).
The embedding is saved beside lerobot's files (`cfg_label_embed.safetensors`), so
lerobot's own `from_pretrained` still loads the checkpoint (without the labels).
Pitfall: with gradient checkpointing (`set_gradient_checkpointing`), the hook runs again
during backward and reads the labels of the most recent call; keep forward and backward of a
batch together. lerobot checkpoints only in train mode, so rollouts (eval mode) never do.

Memory: lerobot builds PaliGemma and the expert in float32 and then casts most of them to
bfloat16, which doubles the peak of a real-size build (about 17 GiB on CPU).
`bf16_construction(config)` allocates them in bfloat16 from the start, with the same dtypes
in the end.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import torch
from lerobot.configs import PreTrainedConfig
from lerobot.policies.common.flow_matching import euler_integrate
from lerobot.policies.common.vla_utils import make_att_2d_masks, pad_vector, prepare_attention_masks_4d
from lerobot.policies.pi0 import modeling_pi0
from lerobot.policies.pi0.modeling_pi0 import PI0Policy
from lerobot.utils.constants import ACTION, OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS, OBS_STATE
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tensordict import NonTensorData, NonTensorStack, TensorDictBase
from torch import nn
from transformers import PreTrainedTokenizerBase

from .policy import NEGATIVE, POSITIVE, UNCONDITIONAL, FlowMatchingPolicy
from .tiny_pi0 import TinyPI0Spec, make_tiny_pi0_config, tiny_pi0_sizes
from .tokenizer import build_libero_tokenizer, load_tokenizer

# TensorDict keys (the schema of envs/keys.py, read as plain strings: algos/ never imports ript.envs).
TD_IMAGE = ("observation", "image")
TD_WRIST_IMAGE = ("observation", "wrist_image")
TD_STATE = ("observation", "state")
TD_LANG_TOKENS = ("observation", "language_tokens")
TD_LANG_MASK = ("observation", "language_attention_mask")
TD_TASK = "task"
TD_ACTION_CHUNK = "action_chunk"
TD_ACTION_MASK = "action_mask"

CFG_FILE = "cfg_label_embed.safetensors"
ACTOR_FILE = "ript_actor.json"
TOKENIZER_DIR = "tokenizer"


def load_preprocessor_stats(directory: str | Path) -> dict[str, dict[str, torch.Tensor]] | None:
    """Normalisation statistics saved by lerobot's policy preprocessor in `directory`, or None.

    lerobot writes them as `policy_preprocessor_step_<i>_normalizer_processor.safetensors`
    with flat keys "<feature>.<stat>" (e.g. "observation.state.mean").
    """
    files = sorted(Path(directory).glob("policy_preprocessor*normalizer*.safetensors"))
    if not files:
        return None
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for file in files:
        for key, value in load_file(str(file)).items():
            feature, stat = key.rsplit(".", 1)
            stats.setdefault(feature, {})[stat] = value
    return stats


def save_normalizer_processors(directory: str | Path, stats: dict[str, dict[str, torch.Tensor]], eps: float = 1e-8) -> None:
    """Write mean-std statistics as lerobot's PI0 pre/post-processor files, so the checkpoint is self-contained.

    `stats` maps "observation.state" and "action" to {"mean", "std"} (lerobot's
    layout, as `load_preprocessor_stats` returns it). lerobot's own loaders and
    `ript.envs.NormStats.from_lerobot_checkpoint` read the result back.
    """
    from lerobot.configs import FeatureType, NormalizationMode, PolicyFeature
    from lerobot.processor import NormalizerProcessorStep, UnnormalizerProcessorStep, make_policy_processor_pipelines

    stats = {name: {k: torch.as_tensor(stats[name][k], dtype=torch.float32) for k in ("mean", "std")} for name in ("observation.state", "action")}
    features = {
        "observation.state": PolicyFeature(type=FeatureType.STATE, shape=tuple(stats["observation.state"]["mean"].shape)),
        "action": PolicyFeature(type=FeatureType.ACTION, shape=tuple(stats["action"]["mean"].shape)),
    }
    norm_map = {
        FeatureType.VISUAL: NormalizationMode.IDENTITY,
        FeatureType.STATE: NormalizationMode.MEAN_STD,
        FeatureType.ACTION: NormalizationMode.MEAN_STD,
    }
    pre, post = make_policy_processor_pipelines(
        input_steps=[NormalizerProcessorStep(features=features, norm_map=norm_map, stats=stats, eps=eps)],
        output_steps=[UnnormalizerProcessorStep(features={"action": features["action"]}, norm_map=norm_map, stats=stats, eps=eps)],
    )
    pre.save_pretrained(str(directory))
    post.save_pretrained(str(directory))


@contextlib.contextmanager
def bf16_construction(config: Any) -> Iterator[None]:
    """Allocate PaliGemma + action expert directly in bfloat16 while a PI0 with `config.dtype == "bfloat16"` is built or loaded.

    lerobot builds them in float32 and casts afterwards (the cast keeps the vision tower, projector
    and norms in float32); here the default dtype is bfloat16 only while that one submodule is
    constructed, so the float32 copy never exists and lerobot's own cast still sets the final
    dtypes. A no-op for float32 configs.
    """
    if getattr(config, "dtype", "float32") != "bfloat16":
        yield
        return
    original = modeling_pi0.PaliGemmaWithExpertModel

    def build_in_bf16(*args: Any, **kwargs: Any) -> nn.Module:
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.bfloat16)
        try:
            return original(*args, **kwargs)
        finally:
            torch.set_default_dtype(previous)

    with mock.patch.object(modeling_pi0, "PaliGemmaWithExpertModel", build_in_bf16):
        yield


def _check_checkpoint_keys(policy: PI0Policy, weights: Path) -> None:
    """Fail loudly where lerobot's loader only prints: missing or mis-shaped weights."""
    with safe_open(str(weights), framework="pt") as f:
        shapes = {(k if k.startswith("model.") else f"model.{k}"): tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    lm_head = "model.paligemma_with_expert.paligemma.lm_head.weight"
    embed = "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight"
    if lm_head in shapes and embed not in shapes:
        shapes[embed] = shapes[lm_head]  # lerobot copies the tied head into the embedding
    state = policy.state_dict()
    in_file_ptrs = {state[k].data_ptr() for k in state if k in shapes}  # tied weights are saved once
    bad = [
        name
        for name, tensor in state.items()
        if (name in shapes and shapes[name] != tuple(tensor.shape))
        or (name not in shapes and tensor.data_ptr() not in in_file_ptrs)
    ]
    if bad:
        raise ValueError(
            f"{weights} does not match the PI0 built from its config.json ({len(bad)} missing or mis-shaped tensors, "
            f"e.g. {bad[0]}): for a tiny checkpoint keep its tiny_pi0.json beside it"
        )


class PI0Actor(FlowMatchingPolicy):
    """lerobot's PI0Policy behind the `FlowMatchingPolicy` interface (see module docstring).

    Args:
        policy: a lerobot `PI0Policy` (built or loaded by the caller).
        tokenizer: tokenizes "task" strings when the tensordict has no language tokens.
        tiny_spec: sizes of a tiny PI0 (saved with the checkpoint); None for lerobot's sizes.
        supports_cfg: add the optimality-label embedding (RIPT-CFG `cfg` mode).
        default_guidance: CFG weight used by `sample_actions(guidance=None)`; None = unconditional.
        loss_action_dims: action dims in the loss; None = the checkpoint's real action dim
            (config.output_features["action"], 7 for LIBERO), as lerobot's forward does.
        image_keys: lerobot image feature -> tensordict key; default pairs the config's image
            features in order with ("observation", "image"), ("observation", "wrist_image").
        dataset_stats: normalisation statistics of the checkpoint (for the env transforms).
        freeze_unreachable: set requires_grad=False on the parameters PI0's action loss can never
            reach (see `unreachable_parameters`): optimisers skip them anyway (no grad), and DDP
            then needs no `find_unused_parameters`.
    """

    def __init__(
        self,
        policy: PI0Policy,
        *,
        tokenizer: PreTrainedTokenizerBase | None = None,
        tiny_spec: TinyPI0Spec | None = None,
        supports_cfg: bool = False,
        default_guidance: float | None = None,
        loss_action_dims: int | None = None,
        image_keys: Mapping[str, Any] | None = None,
        dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
        freeze_unreachable: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(policy, PI0Policy):
            raise TypeError(f"PI0Actor wraps lerobot's PI0Policy, got {type(policy).__name__}; load one with PI0Actor.from_pretrained(path)")
        config = policy.config
        self.policy = policy
        self.tokenizer = tokenizer
        self.tiny_spec = tiny_spec
        self.dataset_stats = dataset_stats
        self.chunk_size = int(config.chunk_size)
        self.n_action_steps = int(config.n_action_steps)
        self.action_dim = int(config.max_action_dim)
        real_dim = int(config.output_features[ACTION].shape[0]) if ACTION in config.output_features else self.action_dim
        self.action_dim_loss = int(loss_action_dims) if loss_action_dims is not None else real_dim
        self.padded_from = real_dim if real_dim < self.action_dim else None
        if not 1 <= self.action_dim_loss <= self.action_dim:
            raise ValueError(f"loss_action_dims must be in [1, {self.action_dim}], got {loss_action_dims}")
        if image_keys is None:
            image_keys = dict(zip(config.image_features, (TD_IMAGE, TD_WRIST_IMAGE), strict=False))
        unknown = set(image_keys) - set(config.image_features)
        if unknown:
            raise ValueError(f"image_keys names {sorted(unknown)}, not image features of the checkpoint {list(config.image_features)}")
        self.image_keys = {k: (v if isinstance(v, str) else tuple(v)) for k, v in image_keys.items()}
        self.in_keys = [*self.image_keys.values(), TD_STATE, TD_TASK]
        self._token_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

        if freeze_unreachable:
            for param in self.unreachable_parameters():
                param.requires_grad_(False)

        self.supports_cfg = bool(supports_cfg)
        self.default_guidance = default_guidance
        # acting time split into lerobot's input preparation and the sampling loop (a collection profile reads it)
        self.phase_seconds = {"preprocess": 0.0, "denoise": 0.0}
        self._labels: torch.Tensor | None = None
        if self.supports_cfg:
            width = policy.model.action_time_mlp_out.out_features
            self.label_embed = nn.Embedding(3, width, padding_idx=UNCONDITIONAL)
            nn.init.zeros_(self.label_embed.weight)
            self.label_embed.to(policy.model.action_time_mlp_out.weight.device)
            policy.model.action_time_mlp_out.register_forward_hook(self._add_label_embedding)
        else:
            self.label_embed = None

    def unreachable_parameters(self) -> list[nn.Parameter]:
        """Parameters with no path to the action expert's output, by PI0's structure.

        The suffix (action) tokens read the VLM only through each layer's keys and values, so
        the VLM's last-layer query/output projections, its last MLP and post-attention norm,
        its final norm and both language-model heads never receive a gradient.
        """
        pwe = self.policy.model.paligemma_with_expert
        vlm = pwe.paligemma.model.language_model
        last = vlm.layers[-1]
        modules = [pwe.paligemma.lm_head, pwe.gemma_expert.lm_head, vlm.norm, last.self_attn.q_proj,
                   last.self_attn.o_proj, last.post_attention_layernorm, last.mlp]
        embed = vlm.embed_tokens.weight  # PaliGemma may tie lm_head to the (used) token embedding
        return [p for m in modules for p in m.parameters() if p is not embed]

    def set_gradient_checkpointing(self, enabled: bool) -> None:
        """Recompute activations during backward (lerobot's `gradient_checkpointing_enable`): activation memory traded for a second forward pass in backward.

        lerobot checkpoints only while the model is in train mode, so sampling in eval mode is unaffected.
        """
        model = self.policy.model
        if enabled:
            model.gradient_checkpointing_enable()
        else:
            model.gradient_checkpointing_disable()
        self.policy.config.gradient_checkpointing = bool(enabled)

    FREEZE_PARTS = ("none", "vision", "trunk")

    def freeze(self, part: str) -> None:
        """Stop training part of PI0 with lerobot's own switches: "vision" (the image encoder) or "trunk" (the whole VLM).

        Why: RL updates from a few dozen rollouts can move the perception the policy was cloned with; freezing
        the trunk leaves RIPT to the action expert and its projections. lerobot keeps a frozen part in eval mode
        through `train()` too. "none" is a no-op.
        """
        if part not in self.FREEZE_PARTS:
            raise ValueError(f"freeze part {part!r}: use one of {self.FREEZE_PARTS}")
        if part == "none":
            return
        pwe = self.policy.model.paligemma_with_expert
        pwe.freeze_vision_encoder = True
        pwe.train_expert_only = part == "trunk"
        pwe._set_requires_grad()  # noqa: SLF001  (lerobot's own freezing, as its constructor runs it; puts the part in eval)

    # -- construction --------------------------------------------------------------------
    @classmethod
    def tiny(
        cls,
        spec: TinyPI0Spec | None = None,
        *,
        seed: int | None = 0,
        supports_cfg: bool = False,
        default_guidance: float | None = None,
        loss_action_dims: int | None = None,
        **config_kwargs: Any,
    ) -> PI0Actor:
        """A randomly initialised tiny PI0 (CPU tests, demos) with the offline LIBERO tokenizer.

        `config_kwargs` go to `make_tiny_pi0_config` (chunk_size, n_action_steps, image_size, ...).
        """
        spec = spec or TinyPI0Spec()
        tokenizer = build_libero_tokenizer()
        if len(tokenizer) > spec.vocab_size:
            raise ValueError(f"TinyPI0Spec.vocab_size {spec.vocab_size} < tokenizer size {len(tokenizer)}: raise vocab_size")
        config = make_tiny_pi0_config(**config_kwargs)
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            with tiny_pi0_sizes(spec):
                policy = PI0Policy(config)
        return cls(
            policy,
            tokenizer=tokenizer,
            tiny_spec=spec,
            supports_cfg=supports_cfg,
            default_guidance=default_guidance,
            loss_action_dims=loss_action_dims,
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        tokenizer_path: str | Path | None = None,
        device: str | torch.device | None = None,
        supports_cfg: bool | None = None,
        default_guidance: float | None = None,
        loss_action_dims: int | None = None,
        image_keys: Mapping[str, Any] | None = None,
        **config_overrides: Any,
    ) -> PI0Actor:
        """Load a lerobot PI0 checkpoint from a local directory (config.json + model.safetensors).

        Picks up, when present: tiny_pi0.json (tiny sizes), tokenizer/ (else `tokenizer_path`, the
        PaliGemma tokenizer saved locally), the preprocessor's normalisation stats, the CFG label
        embedding and the actor settings saved by `save_pretrained`. Arguments override saved settings.
        `config_overrides` set PI0Config fields (e.g. n_action_steps=5, num_inference_steps=10).
        """
        path = Path(path)
        weights = path / "model.safetensors"
        if not (path / "config.json").is_file() or not weights.is_file():
            raise FileNotFoundError(
                f"{path} is not a lerobot PI0 checkpoint (needs config.json and model.safetensors); "
                "download lerobot/pi0_libero elsewhere and pass its local directory"
            )
        spec = TinyPI0Spec.load(path)
        saved = json.loads((path / ACTOR_FILE).read_text()) if (path / ACTOR_FILE).is_file() else {}
        config = PreTrainedConfig.from_pretrained(str(path), local_files_only=True)
        if config.type != "pi0":
            raise ValueError(f"{path} holds a '{config.type}' policy, PI0Actor needs a 'pi0' checkpoint")
        config.device = str(device) if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
        for key, value in config_overrides.items():
            if not hasattr(config, key):
                raise ValueError(f"PI0Config has no field {key!r}; see lerobot's configuration_pi0.py for valid names")
            setattr(config, key, value)
        with tiny_pi0_sizes(spec), bf16_construction(config):
            policy = PI0Policy.from_pretrained(str(path), config=config, local_files_only=True)
        _check_checkpoint_keys(policy, weights)

        if tokenizer_path is not None:
            tokenizer = load_tokenizer(tokenizer_path)
        elif (path / TOKENIZER_DIR).is_dir():
            tokenizer = load_tokenizer(path / TOKENIZER_DIR)
        else:
            tokenizer = build_libero_tokenizer() if spec is not None else None

        cfg = supports_cfg if supports_cfg is not None else saved.get("supports_cfg", False) or (path / CFG_FILE).is_file()
        actor = cls(
            policy,
            tokenizer=tokenizer,
            tiny_spec=spec,
            supports_cfg=cfg,
            default_guidance=default_guidance if default_guidance is not None else saved.get("default_guidance"),
            loss_action_dims=loss_action_dims if loss_action_dims is not None else saved.get("loss_action_dims"),
            image_keys=image_keys if image_keys is not None else saved.get("image_keys"),
            dataset_stats=load_preprocessor_stats(path),
        )
        if actor.label_embed is not None and (path / CFG_FILE).is_file():
            actor.label_embed.load_state_dict(load_file(str(path / CFG_FILE), device=str(policy.config.device)))
        actor.noise_scale = float(saved.get("noise_scale", 1.0))
        actor._source_dir = path
        return actor

    def save_pretrained(self, directory: str | Path) -> Path:
        """Save in lerobot's format (loadable by `PI0Policy.from_pretrained`) plus the actor's extras."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(directory)
        if self.tiny_spec is not None:
            self.tiny_spec.save(directory)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
        if self.label_embed is not None:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.label_embed.state_dict().items()}, str(directory / CFG_FILE))
        source = getattr(self, "_source_dir", None)
        if source is not None and any(Path(source).glob("policy_*processor*")):
            if Path(source).resolve() != directory.resolve():
                for file in Path(source).glob("policy_*processor*"):  # keep lerobot's processors (stats, modes) as they were
                    shutil.copy2(file, directory / file.name)
        elif self.dataset_stats:  # stats given in memory (a policy trained here): write them as lerobot processors
            save_normalizer_processors(directory, self.dataset_stats)
        settings = {
            "supports_cfg": self.supports_cfg,
            "default_guidance": self.default_guidance,
            "loss_action_dims": self.action_dim_loss,
            "image_keys": {k: (v if isinstance(v, str) else list(v)) for k, v in self.image_keys.items()},
            "noise_scale": self.noise_scale,  # acting temperature (match_action_spread); lerobot's own loader ignores it
        }
        (directory / ACTOR_FILE).write_text(json.dumps(settings, indent=2))
        return directory

    # -- batch conversion ------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """Where the model's weights live, so batches are moved there before a forward."""
        return self.policy.model.action_out_proj.weight.device

    @staticmethod
    def _flat(td: TensorDictBase) -> TensorDictBase:
        return td.unsqueeze(0) if td.batch_dims == 0 else td.reshape(-1)

    def _tasks(self, td: TensorDictBase, batch: int) -> list[str]:
        value = td.get(TD_TASK, None)
        if value is None:
            raise KeyError(
                "PI0Actor needs language: the tensordict has neither ('observation', 'language_tokens') nor 'task'; "
                "add the task string or tokenize it in the env transforms"
            )
        if isinstance(value, NonTensorStack):
            tasks = value.tolist()
        elif isinstance(value, NonTensorData):
            tasks = value.data if isinstance(value.data, list) else [value.data] * batch
        elif isinstance(value, str):
            tasks = [value] * batch
        else:
            tasks = list(value)
        while tasks and isinstance(tasks[0], list):  # nested stacks
            tasks = [t for sub in tasks for t in sub]
        if len(tasks) != batch or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"'task' must hold one string per sample ({batch}), got {tasks!r:.200}")
        return tasks

    def tokenize(self, tasks: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids [B, L] and bool mask as lerobot's PI0 processor makes them (newline, right pad), cached."""
        if self.tokenizer is None:
            raise ValueError(
                "PI0Actor has no tokenizer for 'task' strings: pass tokenizer_path=<local PaliGemma tokenizer dir> "
                "or write language tokens in the env transforms"
            )
        missing = [t for t in dict.fromkeys(tasks) if t not in self._token_cache]
        if missing:
            out = self.tokenizer(
                [t if t.endswith("\n") else f"{t}\n" for t in missing],
                max_length=self.policy.config.tokenizer_max_length,
                truncation=True,
                padding="max_length",
                padding_side="right",
                return_tensors="pt",
            )
            for i, task in enumerate(missing):
                self._token_cache[task] = (out["input_ids"][i], out["attention_mask"][i].bool())
        tokens = torch.stack([self._token_cache[t][0] for t in tasks])
        masks = torch.stack([self._token_cache[t][1] for t in tasks])
        return tokens.to(self.device), masks.to(self.device)

    def lerobot_batch(self, td: TensorDictBase, *, with_actions: bool = False) -> dict[str, torch.Tensor]:
        """lerobot's batch dict for a flat [B] tensordict: float images in [0, 1], padded state, tokens."""
        device = self.device
        batch: dict[str, torch.Tensor] = {}
        for feature, key in self.image_keys.items():
            image = td.get(key, None)
            if image is None:
                continue  # lerobot pads absent cameras with masked empty images
            image = image.to(device)
            batch[feature] = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
        if not batch:
            raise KeyError(f"PI0Actor found none of its image entries {list(self.image_keys.values())} in the tensordict")
        batch[OBS_STATE] = td.get(TD_STATE).to(device).float()
        if TD_LANG_TOKENS in td.keys(include_nested=True):
            batch[OBS_LANGUAGE_TOKENS] = td.get(TD_LANG_TOKENS).to(device).long()
            batch[OBS_LANGUAGE_ATTENTION_MASK] = td.get(TD_LANG_MASK).to(device).bool()
        else:
            batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK] = self.tokenize(self._tasks(td, td.shape[0]))
        if with_actions:
            chunk = td.get(TD_ACTION_CHUNK).to(device).float()
            if chunk.shape[-2] != self.chunk_size:
                raise ValueError(f"action_chunk has {chunk.shape[-2]} steps, the policy's chunk_size is {self.chunk_size}")
            batch[ACTION] = pad_vector(chunk, self.action_dim)
        return batch

    def _model_inputs(self, batch: dict[str, torch.Tensor]):
        images, img_masks = self.policy._preprocess_images(batch)  # noqa: SLF001  (lerobot's own preprocessing)
        state = self.policy.prepare_state(batch)
        return images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state

    # -- CFG -------------------------------------------------------------------------------
    def _add_label_embedding(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook on action_time_mlp_out: add the optimality-label embedding to every action token."""
        if self._labels is None:
            return None
        return output + self.label_embed(self._labels).to(output.dtype)[:, None, :]

    def _set_labels(self, labels: torch.Tensor | None, batch: int) -> None:
        if labels is None:
            self._labels = None
            return
        labels = torch.as_tensor(labels, device=self.device).long().reshape(-1)
        if labels.shape[0] != batch:
            raise ValueError(f"optimality has {labels.shape[0]} labels for {batch} samples")
        if labels.numel() and (labels.min() < UNCONDITIONAL or labels.max() > NEGATIVE):
            raise ValueError(f"optimality labels must be 0 (unconditional), 1 (positive) or 2 (negative), got {labels.unique().tolist()}")
        self._labels = labels

    # -- FlowMatchingPolicy ------------------------------------------------------------------
    @torch.no_grad()
    def sample_actions(
        self,
        td: TensorDictBase,
        *,
        noise: torch.Tensor | None = None,
        guidance: float | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Sample normalised, padded chunks [*B, chunk_size, 32] with lerobot's Euler loop."""
        batch_shape = td.batch_size
        flat = self._flat(td)
        n = flat.shape[0]
        model = self.policy.model
        start = time.perf_counter()
        images, img_masks, tokens, masks, state = self._model_inputs(self.lerobot_batch(flat))
        prepared = time.perf_counter()
        self.phase_seconds["preprocess"] += prepared - start
        if noise is not None:
            noise = noise.to(self.device, torch.float32).reshape(n, self.chunk_size, self.action_dim)
        guidance = self.default_guidance if guidance is None else guidance
        if guidance is not None and not self.supports_cfg:
            raise ValueError("guidance needs a CFG head: build the actor with supports_cfg=True")
        if guidance is None:
            self._set_labels(None, n)
            chunk = model.sample_actions(images, img_masks, tokens, masks, state, noise=noise, num_steps=num_steps)
        else:
            chunk = self._sample_guided(images, img_masks, tokens, masks, state, noise, float(guidance), num_steps)
        self.phase_seconds["denoise"] += time.perf_counter() - prepared
        return chunk.reshape(*batch_shape, self.chunk_size, self.action_dim)

    def draw_noise(self, batch: int) -> torch.Tensor:
        """lerobot's own draw (`PI0Pytorch.sample_noise`), so a run that records its noise samples what it would have."""
        return self.policy.model.sample_noise((batch, self.chunk_size, self.action_dim), self.device)

    def _sample_guided(self, images, img_masks, tokens, masks, state, noise, guidance: float, num_steps: int | None = None) -> torch.Tensor:
        """lerobot's sampling with v = v_uncond + w (v_pos - v_uncond): prefix cached once, two denoise_steps per step."""
        model = self.policy.model
        n = state.shape[0]
        if noise is None:
            noise = model.sample_noise((n, self.chunk_size, self.action_dim), state.device)
        prefix_embs, prefix_pad, prefix_att = model.embed_prefix(images, img_masks, tokens, masks)
        prefix_att_4d = prepare_attention_masks_4d(make_att_2d_masks(prefix_pad, prefix_att))
        prefix_pos = torch.cumsum(prefix_pad, dim=1) - 1
        model.paligemma_with_expert.paligemma.model.language_model.config._attn_implementation = "eager"  # noqa: SLF001  (as lerobot)
        _, cache = model.paligemma_with_expert(
            attention_mask=prefix_att_4d,
            position_ids=prefix_pos,
            past_key_values=None,
            inputs_embeds=[prefix_embs, None],
            use_cache=True,
        )
        uncond = torch.full((n,), UNCONDITIONAL, dtype=torch.long, device=state.device)
        positive = torch.full((n,), POSITIVE, dtype=torch.long, device=state.device)

        def velocity(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            self._labels = uncond
            v_uncond = model.denoise_step(state, prefix_pad, cache, x_t, t)
            self._labels = positive
            v_pos = model.denoise_step(state, prefix_pad, cache, x_t, t)
            self._labels = None
            return v_uncond + guidance * (v_pos - v_uncond)

        return euler_integrate(velocity, noise, num_steps or model.config.num_inference_steps)

    def per_sample_loss(
        self,
        td: TensorDictBase,
        *,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        optimality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss per sample [B] over td["action_chunk"], through lerobot's PI0Pytorch.forward.

        Mean over valid steps (td["action_mask"] [B, chunk] bool; all steps if absent) and the first
        `action_dim_loss` dims. A sample without valid steps gets 0. noise/time default to lerobot's
        own draws (normal noise; Beta(1.5, 1) * 0.999 + 0.001 time).
        """
        flat = self._flat(td)
        n = flat.shape[0]
        if optimality is not None and not self.supports_cfg:
            raise ValueError("optimality labels need a CFG head: build the actor with supports_cfg=True")
        batch = self.lerobot_batch(flat, with_actions=True)
        actions = batch[ACTION]
        model = self.policy.model
        noise = model.sample_noise(actions.shape, actions.device) if noise is None else noise.to(actions.device, torch.float32).reshape(actions.shape)
        time = model.sample_time(n, actions.device) if time is None else time.to(actions.device, torch.float32).reshape(n)
        self._set_labels(optimality, n)
        try:
            losses = model(*self._model_inputs(batch), actions, noise, time)  # [B, chunk, 32], via __call__ (hooks run)
        finally:
            if not (model.gradient_checkpointing_enabled and model.training):  # else backward re-runs the hook: keep the labels
                self._labels = None
        per_step = losses[..., : self.action_dim_loss].mean(-1)  # [B, chunk]
        mask = flat.get(TD_ACTION_MASK, None)
        if mask is None:
            return per_step.mean(-1)
        mask = mask.to(per_step.device).reshape(n, -1)
        if mask.shape[-1] != self.chunk_size:
            raise ValueError(f"action_mask has {mask.shape[-1]} steps, expected chunk_size {self.chunk_size}")
        weights = mask.to(per_step.dtype)
        return (per_step * weights).sum(-1) / weights.sum(-1).clamp_min(1.0)
