"""Small tensor geometry helpers for the PI0 observation pipeline.

Kept free of TorchRL so they can be tested (and reused by scripts) on plain
tensors. Each one reproduces the convention the PI0 checkpoints were trained
with, not a "nicer" variant: a different axis-angle branch or padding side would
silently shift the policy's inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def quat_to_axis_angle(quat: torch.Tensor) -> torch.Tensor:
    """Axis-angle [..., 3] from robosuite quaternions [..., 4] in (x, y, z, w) order.

    Same branch as robosuite's `quat2axisangle` and lerobot's LIBERO processor
    (the data PI0-LIBERO was trained on): angle = 2 * acos(w) in [0, 2*pi], no
    sign canonicalisation (q and -q give different vectors), and zeros when the
    rotation is the identity. Computed in float64, returned in the input dtype.
    """
    if quat.shape[-1] != 4:
        raise ValueError(f"quat_to_axis_angle expects [..., 4] (x, y, z, w) quaternions, got shape {tuple(quat.shape)}")
    out_dtype = quat.dtype if quat.is_floating_point() else torch.float32
    q = quat.to(torch.float64)
    w = q[..., 3].clamp(-1.0, 1.0)
    den = torch.sqrt(torch.clamp(1.0 - w * w, min=0.0))
    angle = 2.0 * torch.acos(w)
    valid = den > 1e-10
    # Where den is ~0 (identity rotation) the axis is undefined: the answer is the zero vector.
    axis = q[..., :3] / torch.where(valid, den, torch.ones_like(den)).unsqueeze(-1)
    result = torch.where(valid.unsqueeze(-1), axis * angle.unsqueeze(-1), torch.zeros_like(axis))
    return result.to(out_dtype)


def rotate_180(image: torch.Tensor) -> torch.Tensor:
    """Rotate [..., C, H, W] images by 180 degrees (flip H and W), as LIBERO's cameras need."""
    if image.dim() < 3:
        raise ValueError(f"rotate_180 expects [..., C, H, W] images, got shape {tuple(image.shape)}")
    return torch.flip(image, dims=(-2, -1))


def resize_with_pad(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize [..., C, H, W] images to (height, width) keeping the aspect ratio, padding with black.

    openpi/lerobot PI0 semantics (`resize_with_pad_torch`): scale by
    1/max(W/width, H/height) with sizes truncated by int(), bilinear without
    antialiasing (align_corners=False), then pad centred (the odd pixel goes to
    the bottom/right) with 0. uint8 in, uint8 out (rounded); float images must
    lie in [0, 1] and are clamped there like lerobot does.
    """
    if image.dim() < 3:
        raise ValueError(f"resize_with_pad expects [..., C, H, W] images, got shape {tuple(image.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"resize_with_pad target size must be positive, got ({height}, {width})")
    *lead, channels, cur_h, cur_w = image.shape
    if (cur_h, cur_w) == (height, width):
        return image
    if image.dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"resize_with_pad supports uint8 or float32 images, got {image.dtype}; convert first")
    flat = image.reshape(-1, channels, cur_h, cur_w)
    ratio = max(cur_w / width, cur_h / height)
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    resized = F.interpolate(flat.to(torch.float32), size=(new_h, new_w), mode="bilinear", align_corners=False)
    if image.dtype == torch.uint8:
        resized = resized.round().clamp(0, 255).to(torch.uint8)
    else:
        resized = resized.clamp(0.0, 1.0)
    pad_top, extra_h = divmod(height - new_h, 2)
    pad_left, extra_w = divmod(width - new_w, 2)
    padded = F.pad(resized, (pad_left, pad_left + extra_w, pad_top, pad_top + extra_h), mode="constant", value=0)
    return padded.reshape(*lead, channels, height, width)
