"""TorchRL transforms that turn raw LIBERO data into PI0's inputs, and PI0's actions back.

For the same frame the outputs equal what lerobot's LIBERO env + LiberoProcessorStep
+ PI0 preprocessor (+ the resize inside PI0) give (tests/envs/test_lerobot_reference.py):

    PI0ImageTransform     camera uint8 [3,H,W] -> rotate 180 -> resize-with-pad -> uint8 [3,224,224]
    PI0StateTransform     eef_pos, axis_angle(eef_quat), gripper_qpos -> normalise -> pad to 32
    PI0ActionTransform    (inverse) action [...,32] normalised -> first 7 -> unnormalise -> clip [-1,1]
    PI0TokenizeTransform  "task" -> task + "\\n" -> tokenizer (max_length, right padding) -> tokens, mask

Images stay uint8 (4x smaller in replay buffers); the policy converts to float.
`make_pi0_transforms` returns them in order for `TransformedEnv(env, Compose(*ts))`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import NonTensorData, NonTensorStack, TensorDictBase, unravel_key
from tensordict.utils import NestedKey
from torchrl.data import Bounded, Categorical, Composite, Unbounded
from torchrl.envs.transforms import Transform

from . import keys
from .geometry import quat_to_axis_angle, resize_with_pad, rotate_180
from .normalization import NormStats

__all__ = [
    "PI0ActionTransform",
    "PI0ImageTransform",
    "PI0StateTransform",
    "PI0TokenizeTransform",
    "make_pi0_transforms",
]

LIBERO_ACTION_DIM = 7


class _ObservationTransform(Transform):
    """Applies `_call` on step and reset, and on plain tensordicts (replay buffers, offline data)."""

    def _reset(self, tensordict: TensorDictBase, tensordict_reset: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict_reset)

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        return self._call(tensordict)



class PI0ImageTransform(_ObservationTransform):
    """Rotate each camera image 180 degrees once and resize-with-pad it to a square, uint8 kept.

    Args:
        in_keys: raw camera keys (uint8 [..., 3, H, W], simulator orientation).
        out_keys: where the PI0 images go (same length as in_keys).
        image_size: PI0's square input resolution (224).
        rotate: rotate by 180 degrees (LIBERO's simulator renders upside down).
        drop_inputs: remove the raw images so they are not stored twice.
    """

    def __init__(
        self,
        in_keys: Sequence[NestedKey] = (keys.AGENTVIEW_IMAGE, keys.EYE_IN_HAND_IMAGE),
        out_keys: Sequence[NestedKey] = (keys.PI0_IMAGE, keys.PI0_WRIST_IMAGE),
        image_size: int = 224,
        rotate: bool = True,
        drop_inputs: bool = True,
    ) -> None:
        in_keys, out_keys = list(in_keys), list(out_keys)
        if len(in_keys) != len(out_keys) or not in_keys:
            raise ValueError(f"PI0ImageTransform needs one out_key per camera in_key, got {len(in_keys)} in and {len(out_keys)} out")
        if image_size <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        self.image_size = int(image_size)
        self.rotate = rotate
        self.drop_inputs = drop_inputs

    def _apply_transform(self, image: torch.Tensor) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.dim() < 3 or image.shape[-3] != 3:
            raise ValueError(f"PI0ImageTransform expects uint8 [..., 3, H, W] camera images, got {image.dtype} {tuple(image.shape)}; make the env emit channel-first uint8")
        if self.rotate:
            image = rotate_180(image)
        return resize_with_pad(image, self.image_size, self.image_size)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        next_tensordict = super()._call(next_tensordict)
        if self.drop_inputs:
            for key in self.in_keys:
                if key not in self.out_keys:
                    next_tensordict.pop(key, None)
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        """Resized uint8 camera specs; a missing camera key fails here, at build, not mid-rollout."""
        for in_key, out_key in zip(self.in_keys, self.out_keys):
            if in_key not in observation_spec.keys(True, True):
                raise KeyError(f"PI0ImageTransform: camera key {in_key} is not in the env's observation spec; pass the env's camera keys")
            spec = observation_spec[in_key]
            shape = (*spec.shape[:-2], self.image_size, self.image_size)
            observation_spec[out_key] = Bounded(0, 255, shape=shape, dtype=torch.uint8, device=spec.device)
        if self.drop_inputs:
            for key in self.in_keys:
                if key not in self.out_keys:
                    del observation_spec[key]
        return observation_spec


class PI0StateTransform(_ObservationTransform):
    """State = eef_pos(3) + axis_angle(eef_quat)(3) + gripper_qpos(2), normalised, zero-padded.

    Args:
        norm_stats: the checkpoint's statistics (state part used, its mode and eps).
        in_keys: (eef_pos, eef_quat xyzw, gripper_qpos) keys.
        out_key: where the padded float32 state goes.
        pad_to: PI0's max_state_dim (32); the vector is zero-padded to it.
    """

    def __init__(
        self,
        norm_stats: NormStats,
        in_keys: Sequence[NestedKey] = (keys.EEF_POS, keys.EEF_QUAT, keys.GRIPPER_QPOS),
        out_key: NestedKey = keys.PI0_STATE,
        pad_to: int = 32,
    ) -> None:
        if not isinstance(norm_stats, NormStats):
            raise TypeError(f"norm_stats must be a NormStats (got {type(norm_stats).__name__}); load it with NormStats.from_openpi_json or from_lerobot_checkpoint")
        in_keys = list(in_keys)
        if len(in_keys) != 3:
            raise ValueError(f"PI0StateTransform needs (eef_pos, eef_quat, gripper_qpos) keys, got {in_keys}")
        super().__init__(in_keys=in_keys, out_keys=[out_key])
        self.norm_stats = norm_stats
        self.pad_to = int(pad_to)

    def raw_state(self, pos: torch.Tensor, quat: torch.Tensor, gripper: torch.Tensor) -> torch.Tensor:
        """The unnormalised 8-dim state lerobot's LiberoProcessorStep builds (float32)."""
        return torch.cat([pos.to(torch.float32), quat_to_axis_angle(quat).to(torch.float32), gripper.to(torch.float32)], dim=-1)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        values = [next_tensordict.get(k, default=None) for k in self.in_keys]
        if any(v is None for v in values):
            if self.missing_tolerance:
                return next_tensordict
            missing = [k for k, v in zip(self.in_keys, values) if v is None]
            raise KeyError(f"PI0StateTransform: {missing} not found; the raw env must emit eef pos/quat and gripper qpos")
        next_tensordict.set(self.out_keys[0], self.normalize_padded(self.raw_state(*values)))
        return next_tensordict

    def normalize_padded(self, state: torch.Tensor) -> torch.Tensor:
        """Raw 8-dim state (e.g. a LeRobotDataset's observation.state) -> what PI0 sees: normalised, padded."""
        if state.shape[-1] > self.pad_to:
            raise ValueError(f"state has {state.shape[-1]} dims, more than pad_to={self.pad_to}; raise pad_to to the policy's max_state_dim")
        state = self.norm_stats.normalize_state(state)
        return torch.nn.functional.pad(state, (0, self.pad_to - state.shape[-1]))

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        """The padded state's spec; missing state keys fail at build, not mid-rollout."""
        for k in self.in_keys:
            if k not in observation_spec.keys(True, True):
                raise KeyError(f"PI0StateTransform: {k} is not in the env's observation spec; pass the env's state keys")
        ref = observation_spec[self.in_keys[0]]
        observation_spec[self.out_keys[0]] = Unbounded(shape=(*ref.shape[:-1], self.pad_to), dtype=torch.float32, device=ref.device)
        return observation_spec


class PI0ActionTransform(Transform):
    """Inverse transform: normalised, padded policy actions -> raw simulator actions.

    Outside the env the action is [..., pad_to] (e.g. [n, 32] for a chunk);
    inside it is [..., action_dim] unnormalised and clipped to [low, high].

    Args:
        norm_stats: the checkpoint's statistics (action part, its mode and eps).
        action_key: the action entry.
        action_dim: simulator action width (7 for LIBERO).
        pad_to: PI0's max_action_dim (32).
        clip: (low, high) applied after unnormalising; None disables clipping.
    """

    def __init__(
        self,
        norm_stats: NormStats,
        action_key: NestedKey = keys.ACTION,
        action_dim: int = LIBERO_ACTION_DIM,
        pad_to: int = 32,
        clip: tuple[float, float] | None = (-1.0, 1.0),
    ) -> None:
        if not isinstance(norm_stats, NormStats):
            raise TypeError(f"norm_stats must be a NormStats (got {type(norm_stats).__name__}); load it with NormStats.from_openpi_json or from_lerobot_checkpoint")
        if not 0 < action_dim <= pad_to:
            raise ValueError(f"need 0 < action_dim <= pad_to, got action_dim={action_dim}, pad_to={pad_to}")
        if norm_stats.action_mean.numel() < action_dim:
            raise ValueError(f"action statistics have {norm_stats.action_mean.numel()} dims, the env needs {action_dim}; load statistics for this robot")
        super().__init__(in_keys=[], out_keys=[], in_keys_inv=[action_key], out_keys_inv=[action_key])
        self.norm_stats = norm_stats
        self.action_dim = int(action_dim)
        self.pad_to = int(pad_to)
        self.clip = clip

    def _inv_apply_transform(self, action: torch.Tensor) -> torch.Tensor:
        if action.shape[-1] != self.pad_to:
            raise ValueError(f"PI0ActionTransform expects actions [..., {self.pad_to}] (normalised, padded), got {tuple(action.shape)}; pass the policy's padded output")
        raw = self.norm_stats.unnormalize_action(action[..., : self.action_dim].to(torch.float32))
        if self.clip is not None:
            raw = raw.clamp(*self.clip)
        return raw

    def transform_input_spec(self, input_spec: Composite) -> Composite:
        """The policy sees the padded action width; a mismatched action_dim fails at build."""
        input_spec = input_spec.clone()
        key = ("full_action_spec", *((self.in_keys_inv[0],) if isinstance(self.in_keys_inv[0], str) else self.in_keys_inv[0]))
        inner = input_spec[key]
        if inner.shape[-1] != self.action_dim:
            raise ValueError(f"PI0ActionTransform: env action spec ends in {inner.shape[-1]}, expected action_dim={self.action_dim}; set action_dim to the env's")
        input_spec[key] = Unbounded(shape=(*inner.shape[:-1], self.pad_to), dtype=torch.float32, device=inner.device)
        return input_spec


def _task_strings(value: Any) -> list[str] | str:
    """The instruction(s) held by a NonTensor entry: a str, or a nested list for batched envs."""
    if isinstance(value, (NonTensorData, NonTensorStack)):
        value = value.tolist()
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return [_task_strings(v) for v in value]  # type: ignore[misc]
    raise TypeError(f"the task entry must hold strings, got {type(value).__name__}; the env must write the instruction as NonTensor str")


class PI0TokenizeTransform(_ObservationTransform):
    """Tokenise the instruction like lerobot's PI0 preprocessor (Pi0NewLineProcessor + TokenizerProcessorStep).

    The prompt gets a trailing "\\n" (PaliGemma's convention), then
    `tokenizer(text, max_length, truncation=True, padding="max_length",
    padding_side="right")`; ids are int64, the mask bool. Results are cached
    per instruction (LIBERO has few).

    Args:
        tokenizer: a Hugging Face tokenizer object (e.g. PaliGemma's, loaded locally).
        max_length: PI0's tokenizer_max_length (48).
        in_key: the instruction entry (NonTensor str).
        out_keys: (tokens, attention mask).
        append_newline: add "\\n" when the prompt lacks one (PI0 does).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_length: int = 48,
        in_key: NestedKey = keys.TASK,
        out_keys: Sequence[NestedKey] = (keys.LANG_TOKENS, keys.LANG_MASK),
        append_newline: bool = True,
    ) -> None:
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a callable Hugging Face tokenizer, got {type(tokenizer).__name__}; load one with AutoTokenizer.from_pretrained(local_dir)")
        if max_length <= 0:
            raise ValueError(f"max_length must be positive, got {max_length}")
        out_keys = list(out_keys)
        if len(out_keys) != 2:
            raise ValueError(f"PI0TokenizeTransform needs (tokens_key, mask_key), got {out_keys}")
        super().__init__(in_keys=[in_key], out_keys=out_keys)
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.append_newline = append_newline
        self._cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def tokenize(self, text: str) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids int64 [max_length], mask bool [max_length]) for one instruction."""
        hit = self._cache.get(text)
        if hit is None:
            prompt = text if (not self.append_newline or text.endswith("\n")) else text + "\n"
            out = self.tokenizer(
                [prompt], max_length=self.max_length, truncation=True, padding="max_length", padding_side="right", return_tensors="pt"
            )
            ids, mask = out["input_ids"][0].to(torch.int64), out["attention_mask"][0].to(torch.bool)
            if ids.shape[-1] != self.max_length:
                raise ValueError(f"tokenizer returned {ids.shape[-1]} tokens, expected {self.max_length}; give it a pad token")
            hit = self._cache[text] = (ids, mask)
        return hit

    def _tokenize_nested(self, texts: list | str) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            return self.tokenize(texts)
        pairs = [self._tokenize_nested(t) for t in texts]
        return torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        value = next_tensordict.get(self.in_keys[0], default=None)
        if value is None:
            if self.missing_tolerance:
                return next_tensordict
            raise KeyError(f"PI0TokenizeTransform: '{self.in_keys[0]}' not found; the raw env must write the instruction")
        ids, mask = self._tokenize_nested(_task_strings(value))
        batch = next_tensordict.batch_size
        device = next_tensordict.device
        # copies, never views of the cache: a collector zeroes its buffers in place on reset(), and with an
        # unbatched env a view would zero the cached ids and feed PI0 an empty instruction from then on
        next_tensordict.set(self.out_keys[0], ids.expand(*batch, self.max_length).to(device, copy=True))
        next_tensordict.set(self.out_keys[1], mask.expand(*batch, self.max_length).to(device, copy=True))
        return next_tensordict

    def transform_observation_spec(self, observation_spec: Composite) -> Composite:
        """Adds the token ids and the attention mask, so collectors preallocate them."""
        shape = (*observation_spec.shape, self.max_length)
        device = observation_spec.device
        observation_spec[self.out_keys[0]] = Unbounded(shape=shape, dtype=torch.int64, device=device)
        observation_spec[self.out_keys[1]] = Categorical(2, shape=shape, dtype=torch.bool, device=device)
        return observation_spec


def make_pi0_transforms(
    norm_stats: NormStats,
    image_size: int = 224,
    camera_keys: Sequence[NestedKey] = (keys.AGENTVIEW_IMAGE, keys.EYE_IN_HAND_IMAGE),
    image_out_keys: Sequence[NestedKey] | None = None,
    tokenizer: Any | None = None,
    tokenizer_max_length: int = 48,
    max_state_dim: int = 32,
    max_action_dim: int = 32,
    action_dim: int = LIBERO_ACTION_DIM,
    keep_raw_images: bool = False,
    clip_actions: tuple[float, float] | None = (-1.0, 1.0),
) -> list[Transform]:
    """The PI0 transforms for a raw LIBERO env, in order (compose them in a TransformedEnv).

    Images: rotated 180 and resized-with-pad to `image_size` (uint8). State:
    normalised with `norm_stats` and padded to `max_state_dim`. Actions: the
    env accepts [..., max_action_dim] normalised actions and the simulator gets
    [..., action_dim] unnormalised and clipped. With a `tokenizer`, the task is
    tokenised to `tokenizer_max_length` tokens. `image_out_keys` defaults to
    agentview -> PI0_IMAGE and eye-in-hand -> PI0_WRIST_IMAGE.
    """
    if image_out_keys is None:
        default_out = {keys.AGENTVIEW_IMAGE: keys.PI0_IMAGE, keys.EYE_IN_HAND_IMAGE: keys.PI0_WRIST_IMAGE}
        camera_keys = [unravel_key(k) for k in camera_keys]
        unknown = [k for k in camera_keys if k not in default_out]
        if unknown:
            raise ValueError(f"no default PI0 image key for cameras {unknown}; pass image_out_keys")
        image_out_keys = [default_out[k] for k in camera_keys]
    transforms: list[Transform] = [
        PI0ImageTransform(camera_keys, image_out_keys, image_size=image_size, drop_inputs=not keep_raw_images),
        PI0StateTransform(norm_stats, pad_to=max_state_dim),
        PI0ActionTransform(norm_stats, action_dim=action_dim, pad_to=max_action_dim, clip=clip_actions),
    ]
    if tokenizer is not None:
        transforms.append(PI0TokenizeTransform(tokenizer, max_length=tokenizer_max_length))
    return transforms
