"""GRPO advantages: each reward normalised within its prompt's group.

`A_i = (R_i - mean(R)) / (std(R) + 1e-6)` with the unbiased (N - 1) standard deviation, as in
the paper and EasyR1. A group of one has no baseline and gets A = 0 here; EasyR1 refuses it
instead (it asserts `rollout.n > 1`). The scalar is then broadcast over the rollout's response
tokens by the caller.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

import numpy as np

EPSILON = 1e-6


def group_advantages(rewards: Sequence[float]) -> list[float]:
    """Advantages of one group.

    Example:
        >>> [round(a, 4) for a in group_advantages([1.0, 0.0, 0.5])]
        [1.0, -1.0, 0.0]
    """
    if not rewards:
        raise ValueError("a group needs at least one reward")
    if len(rewards) == 1:
        return [0.0]
    mean = statistics.fmean(rewards)
    std = statistics.stdev(rewards)
    return [(r - mean) / (std + EPSILON) for r in rewards]


def grpo_advantages(rewards: np.ndarray, group_ids: np.ndarray) -> np.ndarray:
    """Vectorised `group_advantages` over a whole batch (float64): the `grpo` estimator per rollout.

    `rewards` [N] holds one reward per rollout; `group_ids` [N] any hashable labels (ints or
    prompt uids), equal for rollouts of the same prompt, in any order.
    """
    from sophiavl_cli.algo.estimators import AdvEstimator, EstimatorInput, compute_advantages

    rewards = np.asarray(rewards, dtype=np.float64)  # [N]
    group_ids = np.asarray(group_ids)  # [N]
    if rewards.ndim != 1 or group_ids.shape != rewards.shape:
        raise ValueError(
            f"rewards {rewards.shape} and group_ids {group_ids.shape} must be 1-D and equal length"
        )
    batch = EstimatorInput(rewards[:, None], np.ones((len(rewards), 1)), group_ids)
    return compute_advantages(AdvEstimator.GRPO, batch)[:, 0]  # [N]
