"""Leave-one-out group advantages (RIPT) and dynamic sampling as a TorchRL transform.

RIPT rolls out K episodes from the same context (task, init state): a group.
Each episode's return is binary success; its advantage is the return minus the
mean return of the other K - 1 episodes of its group (leave-one-out baseline,
unbiased because the baseline does not depend on the episode itself):

    A_ik = R_ik - (sum_j R_ij - R_ik) / (K - 1)

Groups whose K returns are all equal have zero advantage everywhere and are
dropped (dynamic sampling): they carry no learning signal.

`GroupLOOAdvantage` works on raw collector batches: a trajectory or a group may
span several batches, so partial trajectories and incomplete groups are kept
pending across calls (unlike torchrl's `MCAdvantage`, which needs complete
trajectories per call and uses a z-score advantage).
"""

from __future__ import annotations

from collections import defaultdict

import torch
from tensordict import TensorDictBase
from tensordict.utils import NestedKey
from torchrl.envs.transforms import Transform


def leave_one_out_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Rewards [G, K] -> advantages [G, K]: A_ik = R_ik - mean of the group's other K-1 rewards."""
    if rewards.ndim != 2:
        raise ValueError(f"rewards must be [groups, K], got shape {tuple(rewards.shape)}; stack one row per group.")
    k = rewards.shape[-1]
    if k < 2:
        raise ValueError(f"leave-one-out advantages need K >= 2 rollouts per group, got K={k}; raise the group size.")
    if not torch.isfinite(rewards).all():
        raise ValueError("rewards contain NaN or inf; fix the reward/success signal before computing advantages.")
    rewards = rewards.float() if not rewards.is_floating_point() else rewards
    others = (rewards.sum(-1, keepdim=True) - rewards) / (k - 1)
    return rewards - others


def _key_tuple(key: NestedKey) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else tuple(key)


class GroupLOOAdvantage(Transform):
    """Assemble complete groups from collector batches, write leave-one-out advantages, drop uninformative groups.

    Call it on each collector batch (`transform(batch)`, or as a replay-buffer
    transform through `inv` on `extend`): it returns a flat TensorDict [N] with
    every decision step of the groups that completed in this call and were kept,
    each step carrying its trajectory's advantage (`advantage_key`, shape [1])
    and return (`return_key`, shape [1]); or None when no group completed and was kept.

    Trajectories are identified by `traj_key` (the collector's
    ("collector", "traj_ids")) when present, else by the batch row (env index)
    and done flags. A trajectory ends at a step with `done_key` set; its
    return is 1.0 if `success_key` is set at any step (success over every step
    of a chunk, not the last action), else 0.0. A group completes when
    `group_size` trajectories sharing the `group_key` value of their first step
    are done. Steps outside ("collector", "mask") (padded `split_trajs`
    output) are ignored.

    Every emitted step also carries `informative_key` ([1] bool): whether its
    group's outcomes were mixed. With `drop_uninformative=False` the all-success
    and all-fail groups are emitted too, with advantage 0 and informative False:
    they carry no learning signal, but a reference anchor (RIPTCFGLoss) can keep
    the policy near its start on their states, e.g. on a task whose groups all fail.

    Counters since the last `reset_stats()` are in `stats()`: trajectories,
    successes, success_rate, kept_groups (mixed outcomes), dropped_groups (uniform
    outcomes, emitted or not), kept_steps (of kept groups), uninformative_steps
    (of uniform groups emitted with drop_uninformative=False); the
    pending partial trajectories and groups in `pending_trajectories` /
    `pending_groups`.
    """

    def __init__(
        self,
        group_size: int,
        *,
        group_key: NestedKey = "group_id",
        success_key: NestedKey = ("next", "success"),
        done_key: NestedKey = ("next", "done"),
        traj_key: NestedKey = ("collector", "traj_ids"),
        advantage_key: NestedKey = "advantage",
        return_key: NestedKey = "episode_return",
        informative_key: NestedKey = "informative",
        drop_uninformative: bool = True,
        exclude_keys: tuple[NestedKey, ...] = ("next",),
    ) -> None:
        if group_size < 2:
            raise ValueError(f"group_size must be >= 2 for leave-one-out advantages, got {group_size}; use K >= 2 rollouts per context.")
        super().__init__(in_keys=[group_key, success_key, done_key], out_keys=[advantage_key, return_key, informative_key])
        self.group_size = int(group_size)
        self.group_key = _key_tuple(group_key)
        self.success_key = _key_tuple(success_key)
        self.done_key = _key_tuple(done_key)
        self.traj_key = _key_tuple(traj_key)
        self.advantage_key = _key_tuple(advantage_key)
        self.return_key = _key_tuple(return_key)
        self.informative_key = _key_tuple(informative_key)
        self.drop_uninformative = drop_uninformative
        self.exclude_keys = tuple(exclude_keys)
        self._partial: dict[object, list[tuple[TensorDictBase, bool, object]]] = defaultdict(list)
        self._groups: dict[object, list[tuple[TensorDictBase, float]]] = defaultdict(list)
        self.reset_stats()

    # -- bookkeeping -------------------------------------------------------
    def reset_stats(self) -> None:
        """Zero the counters (pending trajectories and groups are kept)."""
        self.n_trajectories = 0
        self.n_successes = 0
        self.kept_groups = 0
        self.dropped_groups = 0
        self.kept_steps = 0
        self.uninformative_steps = 0

    def stats(self) -> dict[str, float]:
        """Counters since the last reset_stats(), plus what is pending."""
        return {
            "trajectories": self.n_trajectories,
            "successes": self.n_successes,
            "success_rate": self.n_successes / self.n_trajectories if self.n_trajectories else float("nan"),
            "kept_groups": self.kept_groups,
            "dropped_groups": self.dropped_groups,
            "kept_steps": self.kept_steps,
            "uninformative_steps": self.uninformative_steps,
            "pending_trajectories": self.pending_trajectories,
            "pending_groups": self.pending_groups,
        }

    @property
    def pending_trajectories(self) -> int:
        """Trajectories still running across collector batches (they finish in a later batch)."""
        return len(self._partial)

    @property
    def pending_groups(self) -> int:
        """Groups still short of group_size finished trajectories (no advantage yet)."""
        return len(self._groups)

    def clear(self) -> None:
        """Forget pending partial trajectories and incomplete groups (e.g. after the policy changed a lot)."""
        self._partial.clear()
        self._groups.clear()

    # -- Transform API -----------------------------------------------------
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase | None:
        """One collector batch in; the trajectories of the groups it completes out (None if none)."""
        return self._process(tensordict)

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        raise RuntimeError("GroupLOOAdvantage works on collector batches, not inside an env; call it on each batch or use it as a replay-buffer transform.")

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase | None:
        return self._process(tensordict)

    # -- core --------------------------------------------------------------
    def _check(self, td: TensorDictBase) -> None:
        for name, key in (("group_key", self.group_key), ("success_key", self.success_key), ("done_key", self.done_key)):
            if td.get(key, None) is None:
                raise KeyError(f"GroupLOOAdvantage: {name} {key} is missing from the batch; set {name}= to the entry your env writes.")

    def _process(self, td: TensorDictBase) -> TensorDictBase | None:
        self._check(td)
        if td.batch_dims == 0:
            raise ValueError("GroupLOOAdvantage expects a batch with a time dim ([T] or [envs, T]), got an empty batch_size.")
        if td.batch_dims == 1:
            td = td.unsqueeze(0)
        elif td.batch_dims > 2:
            td = td.reshape(-1, td.shape[-1])
        out: list[TensorDictBase] = []
        has_traj = td.get(self.traj_key, None) is not None
        has_mask = td.get(("collector", "mask"), None) is not None
        for row in range(td.shape[0]):
            row_td = td[row]
            if has_mask:
                row_td = row_td[row_td.get(("collector", "mask")).reshape(-1).bool()]
            if row_td.batch_size.numel() == 0:  # TensorDict.numel() is never below 1
                continue
            done = row_td.get(self.done_key).reshape(row_td.shape[0], -1).any(-1)
            if has_traj:
                ids = row_td.get(self.traj_key).reshape(-1)
                # segments of constant trajectory id, in time order
                change = torch.ones_like(ids, dtype=torch.bool)
                change[1:] = ids[1:] != ids[:-1]
                starts = change.nonzero().reshape(-1).tolist()
                segments = [(int(ids[s]), s, e) for s, e in zip(starts, starts[1:] + [len(ids)])]
            else:  # no ids: the row is one env's stream, split below on done flags
                segments = [(("row", row), 0, row_td.shape[0])]
            for key, s, e in segments:
                cut = s
                for j in range(s, e):
                    if done[j] or j == e - 1:
                        out += self._add_piece(key, row_td[cut : j + 1], ended=bool(done[j]))
                        cut = j + 1
        if not out:
            return None
        return torch.cat(out, 0)

    def _add_piece(self, key: object, piece: TensorDictBase, ended: bool) -> list[TensorDictBase]:
        """Append steps to a pending trajectory; on its end, file it into its group and maybe emit the group."""
        success = piece.get(self.success_key)
        if success.is_floating_point() and not torch.isfinite(success).all():
            raise ValueError("success flags contain NaN or inf; the env must write a bool success entry.")
        piece_success = bool(success.reshape(piece.shape[0], -1).bool().any())
        stored = piece.exclude(*self.exclude_keys) if self.exclude_keys else piece
        group_val = piece[0].get(self.group_key)
        group = group_val.item() if group_val.numel() == 1 else tuple(group_val.reshape(-1).tolist())
        self._partial[key].append((stored.clone(), piece_success, group))
        if not ended:
            return []
        parts = self._partial.pop(key)
        traj = torch.cat([p for p, _, _ in parts], 0) if len(parts) > 1 else parts[0][0]
        ret = float(any(ok for _, ok, _ in parts))
        group = parts[0][2]  # the group of the trajectory's first step
        self.n_trajectories += 1
        self.n_successes += int(ret > 0)
        self._groups[group].append((traj, ret))
        if len(self._groups[group]) < self.group_size:
            return []
        members = self._groups.pop(group)
        returns = torch.tensor([[r for _, r in members]])
        informative = not bool((returns == returns[0, 0]).all())
        if not informative:
            self.dropped_groups += 1
            if self.drop_uninformative:
                return []
        adv = leave_one_out_advantages(returns)[0]
        pieces = []
        for (traj_td, r), a in zip(members, adv.tolist()):
            n = traj_td.shape[0]
            traj_td.set(self.advantage_key, torch.full((n, 1), a, dtype=torch.float32, device=traj_td.device))
            traj_td.set(self.return_key, torch.full((n, 1), r, dtype=torch.float32, device=traj_td.device))
            traj_td.set(self.informative_key, torch.full((n, 1), informative, dtype=torch.bool, device=traj_td.device))
            pieces.append(traj_td)
        n_steps = sum(p.shape[0] for p in pieces)
        if informative:
            self.kept_groups += 1
            self.kept_steps += n_steps
        else:
            self.uninformative_steps += n_steps
        return pieces
