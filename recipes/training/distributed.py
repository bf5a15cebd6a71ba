"""Process-group plumbing for torchrun: who am I, which device, and never hang.

Read from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); a plain
`python recipes/ript_cfg.py` is world size 1 with no process group at all, so
single-process runs pay nothing. Backend: nccl on CUDA, gloo on CPU, unless the
config names one. Every collective has the configured timeout, so a rank that
dies makes the others fail with a clear error instead of hanging, and
`distributed_session` destroys the process group on every exit path.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank probably crashed."""


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    timeout_s: float = 1800.0

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, writes videos and checkpoints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Collectives are needed only with more than one rank; one rank skips them all."""
        return self.world_size > 1


def _pick_device(requested: str, local_rank: int) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("train.device=cuda but no CUDA device is visible: use train.device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(requested)


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Join the torchrun job described by the environment (or run alone when there is none)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _pick_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
        if backend == "nccl":  # let a failed peer surface as an error in the watchdog, not a hang
            os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
        dist.init_process_group(
            backend=backend,
            timeout=datetime.timedelta(seconds=timeout_s),
            device_id=dev if dev.type == "cuda" else None,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, timeout_s=timeout_s)


def cleanup_distributed() -> None:
    """Destroy the process group if there is one (idempotent)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: str = "auto", backend: str | None = None, timeout_s: float = 1800.0) -> Iterator[DistInfo]:
    """`init_distributed` whose process group is destroyed however the block exits."""
    info = init_distributed(device, backend, timeout_s)
    try:
        yield info
    finally:
        cleanup_distributed()


def barrier(info: DistInfo, what: str = "barrier") -> None:
    """Wait for every rank, failing with a clear error after the configured timeout."""
    if not info.enabled:
        return
    try:
        if dist.get_backend() == "gloo":
            # monitored_barrier names the rank that did not arrive.
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=info.timeout_s), wait_all_ranks=True)
        else:
            dist.barrier()
    except Exception as err:  # noqa: BLE001 - re-raised as one clear line
        raise DistributedError(
            f"rank {info.rank}: {what} failed after at most {info.timeout_s:.0f}s (another rank crashed or hangs: "
            f"see its log; raise distributed.timeout_s if it is only slow): {str(err).splitlines()[0] if str(err) else type(err).__name__}"
        ) from err


def all_reduce_sum(info: DistInfo, values: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Sum numbers over ranks (float64 on the collective's device); a no-op alone."""
    t = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not info.enabled:
        return t
    dev = info.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = t.to(dev)
    try:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    except Exception as err:  # noqa: BLE001
        raise DistributedError(f"rank {info.rank}: all_reduce failed (another rank crashed?): {err}") from err
    return t.cpu()


def any_rank(info: DistInfo, flag: bool) -> bool:
    """True on every rank if it is true on at least one (e.g. early stop, preemption)."""
    return bool(all_reduce_sum(info, [1.0 if flag else 0.0])[0] > 0)


def all_gather_object(info: DistInfo, obj: T) -> list[T]:
    """Every rank's `obj`, in rank order (pickled; for small things: states, episode results)."""
    if not info.enabled:
        return [obj]
    out: list = [None] * info.world_size
    try:
        dist.all_gather_object(out, obj)
    except Exception as err:  # noqa: BLE001
        raise DistributedError(f"rank {info.rank}: all_gather_object failed (another rank crashed?): {str(err).splitlines()[0] if str(err) else type(err).__name__}") from err
    return out


def state_hash(module: torch.nn.Module) -> str:
    """sha1 of every parameter and buffer's bytes (names included): equal iff the replicas are bit-identical."""
    h = hashlib.sha1()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def check_replicas(info: DistInfo, module: torch.nn.Module) -> str:
    """Raise DistributedError unless `module` is bit-identical on every rank; returns the hash."""
    digest = state_hash(module)
    digests = all_gather_object(info, digest)
    if len(set(digests)) != 1:
        raise DistributedError(
            f"rank {info.rank}: model replicas diverged across ranks (hashes {digests}); every rank must run the same optimizer steps: report this as a bug"
        )
    return digest


def shard(items: Sequence[T], info: DistInfo) -> list[T]:
    """This rank's share of `items` (round robin, so shares differ by at most one)."""
    return list(items[info.rank :: info.world_size])


def rank_seed(base_seed: int, info: DistInfo) -> int:
    """Distinct, reproducible seed per rank."""
    return base_seed + 10_000 * info.rank
