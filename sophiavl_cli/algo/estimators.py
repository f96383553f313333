"""Advantage estimators behind `algorithm.adv_estimator`, one registry keyed by an Enum.

Every estimator has one signature: token-level rewards `[N, T]` (the final reward of rollout i
sits on its last response token; with `algorithm.kl_in_reward` every token also carries
`-kl_coef * kl`), the response mask `[N, T]` and group ids `[N]` (equal for rollouts of the same
prompt) -> advantages `[N, T]`, zero outside the mask. Sequence-level estimators reduce a row to
its score `sum_t r_it` first, as verl does. numpy float64, no torch, no Ray: the driver calls
these on the whole step's batch.

Groups of one carry no comparison: the group estimators give them advantage 0 (verl passes
the raw reward through with mean 0 / std 1, EasyR1 refuses n = 1, and so does the recipe here:
`config.algorithm.GROUP_ESTIMATORS`). A group whose rewards are
all equal is centred to exactly 0 (the group mean of equal floats can differ from them in the
last bit, which GRPO's division by std + 1e-6 would turn into ~1e-10); the REINFORCE++-baseline
then whitens those zeros with the rest of the batch. See docs/method.md for the formulas side by side.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

import numpy as np

EPSILON = 1e-6
"""Added to the group std in GRPO (verl and EasyR1)."""
WHITEN_EPSILON = 1e-8
"""Added to the variance when whitening over the batch (verl's `masked_whiten`)."""


class AdvEstimator(str, Enum):
    """`algorithm.adv_estimator` values."""

    GRPO = "grpo"
    DR_GRPO = "dr_grpo"
    RLOO = "rloo"
    REINFORCE_PLUS_PLUS = "reinforce_plus_plus"
    REINFORCE_PLUS_PLUS_BASELINE = "reinforce_plus_plus_baseline"
    GRPO_PASSK = "grpo_passk"


@dataclass(frozen=True)
class EstimatorInput:
    """One step's rewards as the estimators see them."""

    token_rewards: np.ndarray  # float64 [N, T]
    mask: np.ndarray  # float [N, T], 1 on response tokens
    group_ids: np.ndarray  # [N] any labels
    gamma: float = 1.0  # discount of REINFORCE++ returns


Estimator = Callable[[EstimatorInput], np.ndarray]
ESTIMATORS: dict[AdvEstimator, Estimator] = {}


def register(name: AdvEstimator) -> Callable[[Estimator], Estimator]:
    def decorator(fn: Estimator) -> Estimator:
        if name in ESTIMATORS:
            raise ValueError(f"advantage estimator {name.value!r} is registered twice")
        ESTIMATORS[name] = fn
        return fn

    return decorator


def compute_advantages(name: str | AdvEstimator, batch: EstimatorInput) -> np.ndarray:
    """Advantages `[N, T]` (float64, zero outside the mask) of the estimator named `name`."""
    try:
        estimator = ESTIMATORS[AdvEstimator(name)]
    except ValueError:
        known = ", ".join(e.value for e in AdvEstimator)
        raise ValueError(f"unknown advantage estimator {name!r}; use one of {known}") from None
    rewards = np.asarray(batch.token_rewards, dtype=np.float64)
    mask = np.asarray(batch.mask, dtype=np.float64)
    if rewards.ndim != 2 or mask.shape != rewards.shape or len(batch.group_ids) != rewards.shape[0]:
        raise ValueError(
            f"token_rewards {rewards.shape}, mask {mask.shape} and group_ids ({len(batch.group_ids)}) "
            "must be [N, T], [N, T] and [N]"
        )
    out = estimator(EstimatorInput(rewards, mask, np.asarray(batch.group_ids), batch.gamma))
    return out * mask


def outcome_token_rewards(scores: np.ndarray, lengths: np.ndarray, width: int | None = None) -> np.ndarray:
    """Token rewards `[N, T]` with each score on its rollout's last token (column 0 when empty).

    Example:
        >>> outcome_token_rewards(np.array([1.0, 0.5]), np.array([2, 0]), 3).tolist()
        [[0.0, 1.0, 0.0], [0.5, 0.0, 0.0]]
    """
    scores = np.asarray(scores, dtype=np.float64)
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(max(int(lengths.max(initial=0)), 1)) if width is None else width
    out = np.zeros((len(scores), width), dtype=np.float64)
    out[np.arange(len(scores)), np.maximum(lengths - 1, 0)] = scores
    return out


def length_mask(lengths: np.ndarray, width: int) -> np.ndarray:
    """`[N, width]` float mask with the first `lengths[i]` columns of row i set."""
    return (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.float64)


def _groups(group_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group number of each row [N], rows per group [G])."""
    _, index = np.unique(group_ids, return_inverse=True)
    index = index.reshape(-1)
    return index, np.bincount(index).astype(np.float64)


def _group_mean(scores: np.ndarray, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    return (np.bincount(index, weights=scores, minlength=len(counts)) / counts)[index]  # [N]


def _centred(scores: np.ndarray, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """R_i - mean_g R, exactly 0 in groups of one and in groups whose scores are all equal: [N]."""
    high = np.full(len(counts), -np.inf)
    low = np.full(len(counts), np.inf)
    np.maximum.at(high, index, scores)
    np.minimum.at(low, index, scores)
    spread = (high > low)[index]  # [N] False for groups of one and tied groups
    return np.where(spread, scores - _group_mean(scores, index, counts), 0.0)


def _group_std(centred: np.ndarray, index: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Unbiased (N - 1) std of each row's group from its centred scores: [N]."""
    squares = np.bincount(index, weights=centred**2, minlength=len(counts))  # [G]
    return np.sqrt(squares / np.maximum(counts - 1.0, 1.0))[index]  # [N]


def _rows(advantage: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return advantage[:, None] * np.ones_like(mask)  # [N, T]


@register(AdvEstimator.GRPO)
def grpo(batch: EstimatorInput) -> np.ndarray:
    """A_i = (R_i - mean_g R) / (std_g R + 1e-6), std unbiased (N - 1)."""
    scores = batch.token_rewards.sum(axis=1)  # [N]
    index, counts = _groups(batch.group_ids)
    centred = _centred(scores, index, counts)  # [N]
    return _rows(centred / (_group_std(centred, index, counts) + EPSILON), batch.mask)


@register(AdvEstimator.DR_GRPO)
def dr_grpo(batch: EstimatorInput) -> np.ndarray:
    """A_i = R_i - mean_g R: GRPO without the division by the group std (Liu et al. 2025)."""
    scores = batch.token_rewards.sum(axis=1)
    index, counts = _groups(batch.group_ids)
    return _rows(_centred(scores, index, counts), batch.mask)


@register(AdvEstimator.RLOO)
def rloo(batch: EstimatorInput) -> np.ndarray:
    """A_i = R_i - mean of the other rollouts' R = n / (n - 1) * (R_i - mean_g R)."""
    scores = batch.token_rewards.sum(axis=1)
    index, counts = _groups(batch.group_ids)
    n = counts[index]
    return _rows(_centred(scores, index, counts) * n / np.maximum(n - 1.0, 1.0), batch.mask)


@register(AdvEstimator.GRPO_PASSK)
def grpo_passk(batch: EstimatorInput) -> np.ndarray:
    """Pass@k advantages (arXiv:2503.19595), as EasyR1's and verl's `grpo_passk`.

    Only the group's best rollout gets an advantage, (R_max - R_second) / (std_g R + 1e-6): the
    amount by which it raises the group's maximum over leaving it out. Every other rollout, a
    group whose top two tie, and a group of one get 0 (EasyR1 asserts n > 1, verl raises).
    """
    scores = batch.token_rewards.sum(axis=1)  # [N]
    index, counts = _groups(batch.group_ids)
    order = np.lexsort((-scores, index))  # [N] by group, best first (ties: the first row)
    starts = (np.cumsum(counts) - counts).astype(np.int64)  # [G] each group's first place in `order`
    best = order[starts]  # [G]
    second = order[np.minimum(starts + 1, len(order) - 1)]  # [G] meaningful where counts > 1
    std = _group_std(_centred(scores, index, counts), index, counts)[best]  # [G]
    gap = np.where(counts > 1, scores[best] - scores[second], 0.0)  # [G] >= 0
    advantage = np.zeros_like(scores)
    advantage[best] = gap / (std + EPSILON)
    return _rows(advantage, batch.mask)


def masked_whiten(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(x - mean) / sqrt(var + 1e-8) over the masked entries, var unbiased; zeros below 2 entries."""
    count = mask.sum()
    if count < 2:
        return np.zeros_like(values)
    mean = (values * mask).sum() / count
    var = (((values - mean) ** 2) * mask).sum() / count * count / (count - 1.0)
    return (values - mean) / np.sqrt(var + WHITEN_EPSILON)


@register(AdvEstimator.REINFORCE_PLUS_PLUS)
def reinforce_plus_plus(batch: EstimatorInput) -> np.ndarray:
    """Discounted returns-to-go G_t = r_t + gamma * G_{t+1}, whitened over the batch's tokens."""
    rewards, mask = batch.token_rewards, batch.mask
    returns = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + batch.gamma * running
        returns[:, t] = running
        running = running * mask[:, t]  # nothing flows back from past the response's end
    return masked_whiten(returns, mask)


@register(AdvEstimator.REINFORCE_PLUS_PLUS_BASELINE)
def reinforce_plus_plus_baseline(batch: EstimatorInput) -> np.ndarray:
    """R_i - mean_g R on every token, then whitened over the batch's tokens."""
    scores = batch.token_rewards.sum(axis=1)
    index, counts = _groups(batch.group_ids)
    return masked_whiten(_rows(_centred(scores, index, counts), batch.mask), batch.mask)
