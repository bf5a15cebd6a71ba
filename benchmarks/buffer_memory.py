"""Bytes per stored decision step in the recipe's replay buffer vs the raw uint8 bytes of its images and state.

    .venv/bin/python benchmarks/buffer_memory.py [samples=64] [--dry-run]

Builds decision steps with the entries the recipe stores (`stored_keys`: the PI0
inputs, the sampled chunk, the advantage), extends the recipe's
TensorDictReplayBuffer (LazyTensorStorage) with them and measures the storage's
tensor bytes. Target: ratio <= 1.1 (images stay uint8; nothing else is stored).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tensordict import TensorDict

from ript.algos import make_replay_buffer
from ript.recipes.training.cli import run_cli
from ript.recipes.training.config import ConfigError

KEYS = {"image": ("observation", "image"), "wrist": ("observation", "wrist_image"), "state": ("observation", "state")}


@dataclass
class BufferConfig:
    samples: int = 64  # decision steps stored per setting (the ratio is per step)


def validate(cfg: BufferConfig) -> None:
    """A buffer of no steps has no bytes per step."""
    if cfg.samples < 1:
        raise ConfigError(f"samples={cfg.samples} must be >= 1")


class _PI0Like(torch.nn.Module):
    in_keys = [KEYS["image"], KEYS["wrist"], KEYS["state"], "task"]


def decision_steps(n: int, image: int, chunk: int, tokens: int) -> TensorDict:
    """n decision steps shaped like the collector's output after the PI0 transforms (plus extras the recipe drops)."""
    return TensorDict(
        {
            "observation": {
                "image": torch.randint(0, 255, (n, 3, image, image), dtype=torch.uint8),
                "wrist_image": torch.randint(0, 255, (n, 3, image, image), dtype=torch.uint8),
                "state": torch.randn(n, 32),
                "language_tokens": torch.randint(0, 100, (n, tokens)),
                "language_attention_mask": torch.ones(n, tokens, dtype=torch.bool),
            },
            "action_chunk": torch.randn(n, chunk, 32),
            "action": torch.randn(n, 5, 32),
            "advantage": torch.randn(n, 1),
            "episode_return": torch.ones(n, 1),
            "task_id": torch.zeros(n, dtype=torch.int64),
            "group_id": torch.zeros(n, dtype=torch.int64),
            "collector": {"traj_ids": torch.zeros(n, dtype=torch.int64)},
        },
        batch_size=[n],
    )


def measure(image: int, chunk: int, tokens: int, n: int = 64) -> tuple[float, float]:
    """Bytes per stored decision step in the replay buffer and the raw uint8 bytes it holds."""
    from ript.recipes.training.factories import stored_keys

    data = decision_steps(n, image, chunk, tokens)
    data = data.select(*stored_keys(_PI0Like(), data))
    buffer = make_replay_buffer(n)
    buffer.extend(data)
    storage = buffer._storage._storage  # the preallocated TensorDict
    stored = sum(t.numel() * t.element_size() for t in storage.values(True, True)) / n
    raw = 2 * 3 * image * image + 8 * 4  # two uint8 cameras + the 8 float32 LIBERO state numbers
    return stored, raw


def report(cfg: BufferConfig) -> None:
    """Stored vs raw bytes per step for real-size and tiny PI0 inputs."""
    print(f"{'setting':32s} {'stored B/step':>14s} {'raw B/step':>11s} {'ratio':>6s}")
    for name, image, chunk, tokens in (("PI0 (224 px, chunk 50, 48 tok)", 224, 50, 48), ("tiny PI0 (64 px, chunk 10, 16 tok)", 64, 10, 16)):
        stored, raw = measure(image, chunk, tokens, n=cfg.samples)
        print(f"{name:32s} {stored:14.0f} {raw:11.0f} {stored / raw:6.3f}")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: key=value settings, --dry-run, -h."""
    run_cli(BufferConfig, report, argv, validate=validate, description=__doc__)


if __name__ == "__main__":
    main()
