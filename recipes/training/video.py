"""Rollout videos: both cameras side by side, a coloured border for success/failure, mp4.

mp4 goes through imageio's ffmpeg plugin (imageio-ffmpeg ships its own ffmpeg
binary). torchcodec cannot write here without FFmpeg's shared libraries, so it is
not used.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

SUCCESS_RGB = (40, 200, 60)
FAILURE_RGB = (220, 50, 50)


def _to_hwc_uint8(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """Accept CHW or HWC, uint8 or float in [0, 1]; return HWC uint8 RGB."""
    a = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    if a.ndim != 3:
        raise ValueError(f"a frame must be [H, W, C] or [C, H, W], got shape {a.shape}: pass one image per camera")
    if a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, -1)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8) if a.max() <= 1.0 else np.clip(a, 0, 255).astype(np.uint8)
    return a


def compose_frame(cameras: Sequence[np.ndarray | torch.Tensor], success: bool | None = None, border: int = 4) -> np.ndarray:
    """Cameras side by side (heights matched by padding), framed green (success) or red (failure)."""
    imgs = [_to_hwc_uint8(c) for c in cameras]
    h = max(i.shape[0] for i in imgs)
    imgs = [np.pad(i, ((0, h - i.shape[0]), (0, 0), (0, 0))) for i in imgs]
    frame = np.concatenate(imgs, axis=1)
    if success is not None and border > 0:
        color = np.array(SUCCESS_RGB if success else FAILURE_RGB, dtype=np.uint8)
        frame = np.pad(frame, ((border, border), (border, border), (0, 0)))
        frame[:border], frame[-border:], frame[:, :border], frame[:, -border:] = color, color, color, color
    # libx264 with yuv420p wants even sides
    ph, pw = frame.shape[0] % 2, frame.shape[1] % 2
    if ph or pw:
        frame = np.pad(frame, ((0, ph), (0, pw), (0, 0)))
    return frame


def episode_frames(camera_streams: Sequence[Sequence[np.ndarray | torch.Tensor]], success: bool | None) -> list[np.ndarray]:
    """Frames of one episode from per-camera streams of equal length."""
    lengths = {len(s) for s in camera_streams}
    if len(lengths) != 1:
        raise ValueError(f"camera streams have different lengths {sorted(lengths)}: record every camera at every frame")
    return [compose_frame([s[t] for s in camera_streams], success) for t in range(lengths.pop())]


def write_mp4(frames: Sequence[np.ndarray], path: str | Path, fps: int = 10) -> Path:
    """Write HWC uint8 frames to an H.264 mp4 (all frames padded to the largest size)."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError(f"no frames to write to {path}: record at least one frame")
    h = max(f.shape[0] for f in frames)
    w = max(f.shape[1] for f in frames)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with imageio.get_writer(str(path), fps=fps, codec="libx264", macro_block_size=1, ffmpeg_log_level="error", pixelformat="yuv420p") as writer:
        for f in frames:
            writer.append_data(np.pad(f, ((0, h - f.shape[0]), (0, w - f.shape[1]), (0, 0))))
    return path


def tile_episodes(episodes: Sequence[list[np.ndarray]], max_cols: int = 4) -> list[np.ndarray]:
    """Several episodes in one video as a grid; short episodes hold their last frame."""
    if not episodes:
        return []
    n = len(episodes)
    cols = min(max_cols, n)
    rows = -(-n // cols)
    length = max(len(e) for e in episodes)
    h = max(f.shape[0] for e in episodes for f in e)
    w = max(f.shape[1] for e in episodes for f in e)
    blank = np.zeros((h, w, 3), np.uint8)
    out = []
    for t in range(length):
        cells = []
        for i in range(rows * cols):
            if i < n:
                f = episodes[i][min(t, len(episodes[i]) - 1)]
                cells.append(np.pad(f, ((0, h - f.shape[0]), (0, w - f.shape[1]), (0, 0))))
            else:
                cells.append(blank)
        out.append(np.concatenate([np.concatenate(cells[r * cols : (r + 1) * cols], 1) for r in range(rows)], 0))
    return out
