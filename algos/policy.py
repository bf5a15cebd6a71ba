"""The interface RIPT-CFG needs from a policy, and nothing more.

Any flow-matching policy (lerobot's PI0 through `PI0Actor`, the small
`FlowMatchingMLPPolicy`, or a user's own) plugs into `RIPTCFGLoss`, the
collector and the recipes by subclassing `FlowMatchingPolicy`. The loss never
wraps the policy functionally, so DDP can wrap the policy (or the loss module)
and its hooks run.

Conventions (openpi / lerobot flow matching):
    t ~ Beta(1.5, 1) * 0.999 + 0.001,  x_t = t * noise + (1 - t) * actions,
    target velocity u = noise - actions,  sampling integrates from t=1 to t=0.

Optimality labels for CFG mode (CFGRL): 0 = unconditional (null label),
1 = positive (advantage > 0), 2 = negative (advantage <= 0).
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import Iterator

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase

UNCONDITIONAL, POSITIVE, NEGATIVE = 0, 1, 2


def sample_flow_time(batch_size: int, device: torch.device | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flow-matching time as openpi/lerobot draw it: Beta(1.5, 1) * 0.999 + 0.001."""
    beta = torch.distributions.Beta(torch.tensor(1.5), torch.tensor(1.0))
    if generator is None:
        t = beta.sample((batch_size,))
    else:  # Beta has no generator argument: draw through uniform + inverse CDF of Beta(1.5, 1), x = u^(1/1.5)
        u = torch.rand(batch_size, generator=generator)
        t = u.pow(1.0 / 1.5)
    return (t * 0.999 + 0.001).to(device)


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """Eval mode and no_grad for a measurement; the module's training flag comes back even on an error."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


@contextlib.contextmanager
def training_mode(module: torch.nn.Module, training: bool) -> Iterator[None]:
    """Train (updates) or eval (collection) mode inside the block, the previous flag restored on exit.

    Why explicit: lerobot loads PI0 in eval mode and applies gradient checkpointing only in train
    mode, so updates must switch to train mode and rollouts back to eval mode. Gradients are left
    as they are (collectors run under no_grad themselves).
    """
    was_training = module.training
    module.train(training)
    try:
        yield
    finally:
        module.train(was_training)


class FlowMatchingPolicy(TensorDictModuleBase, abc.ABC):
    """A policy that samples action chunks and exposes a per-sample flow-matching loss.

    Subclasses set `chunk_size` (actions predicted per call), `n_action_steps`
    (actions executed before replanning) and `action_dim` (width of the stored,
    normalised and padded chunk), and implement the three methods below.

    It is a `TensorDictModuleBase` (an nn.Module with `in_keys`/`out_keys`), so
    torchrl's collectors take it as a policy as is. Subclasses may narrow
    `in_keys` (`self.in_keys = [...]`) to the entries they read.
    """

    # TensorDictModuleBase's in_keys/out_keys properties read these defaults.
    _in_keys = ["observation"]
    _out_keys = _out_keys_apparent = ["action_chunk", "action"]

    chunk_size: int
    n_action_steps: int
    action_dim: int
    supports_cfg: bool = False

    @abc.abstractmethod
    def sample_actions(
        self,
        td: TensorDictBase,
        *,
        noise: torch.Tensor | None = None,
        guidance: float | None = None,
        num_steps: int | None = None,
    ) -> torch.Tensor:
        """Sample a chunk [B, chunk_size, action_dim] for the observations in `td`.

        `noise` fixes the initial noise (reproducible sampling). `guidance` is the
        CFG weight w: v = v_uncond + w * (v_pos - v_uncond); None means the
        policy's default (conditional on nothing when it has no CFG head).
        `num_steps` overrides the policy's number of Euler steps (None: its own).
        """

    @abc.abstractmethod
    def per_sample_loss(
        self,
        td: TensorDictBase,
        *,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
        optimality: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Flow-matching loss per sample, shape [B], over the stored `action_chunk`.

        Steps outside `td["action_mask"]` ([B, chunk_size] bool, if present) do
        not count; each sample's loss is the mean over its valid steps and the
        first `action_dim_loss` dims. `optimality` ([B] int64, CFG labels) is
        only accepted by policies with `supports_cfg`.
        """

    #: index of the first padding dim of a sampled chunk (e.g. 7 for PI0's 32-wide LIBERO actions), or None.
    #: Padding dims are zeroed before the chunk is stored, as lerobot pads dataset actions: left as sampled
    #: noise they enter x_t in the loss and the policy drifts (measured on ToyVLAEnv: success 0.36 -> 0.01).
    padded_from: int | None = None

    #: write the initial noise of every sample to td["action_noise"] (what `relabel_chunks` needs to
    #: re-integrate the same sample with more Euler steps); off by default, it adds a chunk-sized entry per step.
    record_noise: bool = False

    #: standard deviation of the initial noise when acting (1: the noise the policy was trained from). A flow
    #: policy's sampling temperature: `match_action_spread` sets it to hold the spread of the actions fixed.
    noise_scale: float = 1.0

    def draw_noise(self, batch: int) -> torch.Tensor:
        """Initial noise [batch, chunk_size, action_dim] as `sample_actions` would draw it (standard normal)."""
        return torch.randn(batch, self.chunk_size, self.action_dim)

    @torch.no_grad()
    def sample_chunk(self, td: TensorDictBase, *, noise: torch.Tensor | None = None, num_steps: int | None = None) -> torch.Tensor:
        """A chunk as it is stored and trained on: `sample_actions` under no_grad, padding dims zeroed."""
        chunk = self.sample_actions(td, noise=noise, num_steps=num_steps)
        if self.padded_from is not None:
            chunk[..., self.padded_from :] = 0
        return chunk

    def act(self, td: TensorDictBase, *, noise: torch.Tensor | None = None) -> TensorDictBase:
        """Write the full chunk (padding dims zeroed) and the part to execute, under no_grad; `noise` fixes the sample."""
        if noise is None and (self.record_noise or self.noise_scale != 1.0):  # else the policy draws its own
            unit = self.draw_noise(td.batch_size.numel()).reshape(*td.batch_size, self.chunk_size, self.action_dim)
            noise = unit * self.noise_scale
        chunk = self.sample_chunk(td, noise=noise)
        td.set("action_chunk", chunk)
        td.set("action", chunk[..., : self.n_action_steps, :])
        if self.record_noise:
            td.set("action_noise", noise.to(chunk))
        return td

    def forward(self, td: TensorDictBase) -> TensorDictBase:
        """Act with fresh noise (what a collector calls)."""
        return self.act(td)
