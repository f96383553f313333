"""Algorithms: Trust-GRPO reward combination, GRPO advantages, policy/KL/entropy losses.

Pure functions with no Ray and no torch.distributed. Importing this package loads no torch:
the tensor losses live in `sophiavl_cli.algo.losses`, imported where they are used.
"""

from sophiavl_cli.algo.advantages import group_advantages, grpo_advantages
from sophiavl_cli.algo.trust_grpo import (
    GroupRewards,
    annealed_weight,
    group_rewards,
    needs_thinking,
    outcome_only,
    step_trust_metrics,
)

__all__ = [
    "GroupRewards",
    "annealed_weight",
    "group_advantages",
    "group_rewards",
    "grpo_advantages",
    "needs_thinking",
    "outcome_only",
    "step_trust_metrics",
]
