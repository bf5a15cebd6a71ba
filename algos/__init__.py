"""algos"""

from .advantages import GroupLOOAdvantage, leave_one_out_advantages
from .loss import RIPTCFGLoss, steps_with_weight
from .mlp_policy import FlowMatchingMLPPolicy
from .policy import FlowMatchingPolicy, evaluating, training_mode
from .rollout import (
    SpreadKeeper,
    StepWindow,
    action_spread,
    balance_by_key,
    make_replay_buffer,
    match_action_spread,
    refill_replay_buffer,
    relabel_chunks,
    update_policy,
)

# PI0 parts import lerobot/transformers (seconds): loaded on first use so that the MLP
# policy, the loss and the advantages stay cheap to import.
_LAZY = {
    "PI0Actor": ".pi0_actor",
    "load_preprocessor_stats": ".pi0_actor",
    "bf16_construction": ".pi0_actor",
    "TinyPI0Spec": ".tiny_pi0",
    "make_tiny_pi0_config": ".tiny_pi0",
    "tiny_pi0_sizes": ".tiny_pi0",
    "build_libero_tokenizer": ".tokenizer",
    "load_tokenizer": ".tokenizer",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
