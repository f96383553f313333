"""Algorithms: Trust-GRPO reward combination, advantage estimators, DAPO's dynamic sampling and
overlong penalty, policy/KL/entropy losses (docs/method.md has the table).

Pure functions with no Ray and no torch.distributed. Importing this package loads no torch:
the tensor losses live in `sophiavl_cli.algo.losses`, imported where they are used.
"""

from sophiavl_cli.algo.advantages import group_advantages, grpo_advantages
from sophiavl_cli.algo.dynamic_sampling import GroupPool, informative
from sophiavl_cli.algo.estimators import AdvEstimator, EstimatorInput, compute_advantages
from sophiavl_cli.algo.overlong import overlong_penalty
from sophiavl_cli.algo.trust_grpo import (
    GroupRewards,
    annealed_weight,
    group_rewards,
    needs_thinking,
    outcome_only,
    step_trust_metrics,
)

__all__ = [
    "AdvEstimator",
    "EstimatorInput",
    "GroupPool",
    "GroupRewards",
    "annealed_weight",
    "compute_advantages",
    "group_advantages",
    "group_rewards",
    "grpo_advantages",
    "informative",
    "needs_thinking",
    "outcome_only",
    "overlong_penalty",
    "step_trust_metrics",
]
