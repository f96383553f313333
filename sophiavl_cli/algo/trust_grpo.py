"""Trust-GRPO: combine a group's outcome rewards with trust-weighted thinking rewards.

For one prompt's G rollouts, with `correct = {i : outcome_i >= 0.5}`:

    mu_c = mean(thinking over correct)        mu_w = mean(thinking over the others)
    gamma = 1 if mu_c >= mu_w else exp(mu_c - mu_w)       (distrust an RM that prefers wrong answers)
    w_t = alpha * exp(-t / T)                              (annealed; t is the 1-based step)
    R_i = outcome_i + gamma * w_t * thinking_i

Two modes (docs/method.md):
- `paper` (default): the RM scores every rollout; a side with no rollouts means gamma = 1.
- `release`: the released code's behaviour. Groups where every outcome >= 0.9 or every outcome
  <= 0.1 skip the RM and keep R = outcome; only rollouts with outcome >= 0.2 are scored, the rest
  count as thinking 0; gamma = 1 when no rollout is correct. The released code logged
  exp(2 * (mu_c - mu_w)) but applied exp(mu_c - mu_w); `gamma` here is always the applied value.

A group whose RM call failed is not combined at all: `outcome_only` gives it R = outcome and is
counted in `trust/fallback_groups`, never scored as thinking 0.

Pure Python (`math`, `statistics`): no torch, no Ray, so the driver calls it per group directly.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from sophiavl_cli.metrics.keys import (
    REWARD_FINAL,
    REWARD_THINKING,
    TRUST_DISTRUSTED_FRACTION,
    TRUST_FALLBACK_GROUPS,
    TRUST_GAMMA,
    TRUST_MU_CORRECT,
    TRUST_MU_WRONG,
    TRUST_WEIGHT,
)

MODES = ("paper", "release")
CORRECT_THRESHOLD = 0.5
"""An outcome at or above this counts as correct when splitting a group."""
RELEASE_ALL_HIGH = 0.9
RELEASE_ALL_LOW = 0.1
"""Release mode: a group with every outcome >= ALL_HIGH or every outcome <= ALL_LOW skips the RM."""
RELEASE_MIN_OUTCOME = 0.2
"""Release mode: only rollouts with at least this outcome are sent to the RM."""


@dataclass(frozen=True, kw_only=True)
class GroupRewards:
    """Final rewards of one group and the numbers behind them (for metrics)."""

    rewards: list[float]
    gamma: float  # the applied trust weight, in (0, 1]
    weight: float  # the annealed thinking-reward weight w_t (0 for an RM-failure fallback)
    mu_c: float | None = None  # mean thinking reward of correct rollouts; None when there are none
    mu_w: float | None = None  # same for incorrect rollouts
    thinking_mean: float | None = None  # mean of the RM scores received; None when none were
    num_scored: int = 0  # rollouts with an RM score
    fallback: bool = False  # True when built by `outcome_only` after an RM failure

    @property
    def distrusted(self) -> bool:
        """Whether the thinking rewards were down-weighted (gamma < 1)."""
        return self.gamma < 1.0


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown trust mode {mode!r}; use one of {', '.join(MODES)}")


def _release_skips_group(outcome: Sequence[float]) -> bool:
    return all(o >= RELEASE_ALL_HIGH for o in outcome) or all(o <= RELEASE_ALL_LOW for o in outcome)


def needs_thinking(outcome: Sequence[float], mode: str) -> list[bool]:
    """Which rollouts of a group to send to the thinking reward model.

    Example:
        >>> needs_thinking([1.0, 0.0, 0.3], "release")
        [True, False, True]
        >>> needs_thinking([1.0, 0.95], "release")
        [False, False]
    """
    _check_mode(mode)
    if mode == "paper":
        return [True] * len(outcome)
    if _release_skips_group(outcome):
        return [False] * len(outcome)
    return [o >= RELEASE_MIN_OUTCOME for o in outcome]


def annealed_weight(step: int, *, alpha: float, horizon: float, anneal: bool = True) -> float:
    """w_t = alpha * exp(-step / horizon), or alpha when annealing is off. `step` is 1-based."""
    if step < 1:
        raise ValueError(f"step is 1-based, got {step}")
    if horizon <= 0:
        raise ValueError(f"horizon must be > 0, got {horizon}")
    return alpha * math.exp(-step / horizon) if anneal else alpha


def _mean_or_none(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def group_rewards(
    outcome: Sequence[float],
    thinking: Sequence[float | None],
    step: int,
    *,
    alpha: float = 0.3,
    horizon: float,
    mode: str = "paper",
    use_trust: bool = True,
    anneal: bool = True,
) -> GroupRewards:
    """Trust-GRPO rewards of one group (see the module docstring for the formulas).

    `thinking[i]` is the RM score of rollout i, or None where `needs_thinking` said not to ask
    (paper mode needs every score). `use_trust=False` fixes gamma = 1 and `anneal=False` keeps the
    weight at alpha: the paper's two ablations.

    Example:
        >>> g = group_rewards([1.0, 0.0], [0.2, 0.8], step=1, horizon=1e9)
        >>> round(g.gamma, 4), [round(r, 4) for r in g.rewards]
        (0.5488, [1.0329, 0.1317])
    """
    _check_mode(mode)
    if not outcome:
        raise ValueError("a group needs at least one rollout")
    if len(thinking) != len(outcome):
        raise ValueError(f"{len(outcome)} outcome rewards but {len(thinking)} thinking rewards")
    weight = annealed_weight(step, alpha=alpha, horizon=horizon, anneal=anneal)
    received = [t for t in thinking if t is not None]
    thinking_mean = _mean_or_none(received)

    if mode == "release" and _release_skips_group(outcome):
        return GroupRewards(
            rewards=[float(o) for o in outcome],
            gamma=1.0,
            weight=weight,
            thinking_mean=thinking_mean,
            num_scored=len(received),
        )
    if mode == "paper" and len(received) != len(thinking):
        missing = [i for i, t in enumerate(thinking) if t is None]
        raise ValueError(f"paper mode needs a thinking reward for every rollout; missing at {missing}")

    scores = [0.0 if t is None else float(t) for t in thinking]
    correct = [s for o, s in zip(outcome, scores, strict=True) if o >= CORRECT_THRESHOLD]
    wrong = [s for o, s in zip(outcome, scores, strict=True) if o < CORRECT_THRESHOLD]
    mu_c, mu_w = _mean_or_none(correct), _mean_or_none(wrong)
    gap = (0.0 if mu_c is None else mu_c) - (0.0 if mu_w is None else mu_w)
    if mode == "paper":  # nothing to compare when a side is empty
        distrust = mu_c is not None and mu_w is not None and gap < 0
    else:  # release: an empty side has mean 0; without a correct rollout gamma stays 1
        distrust = bool(correct) and gap < 0
    gamma = math.exp(gap) if use_trust and distrust else 1.0
    rewards = [float(o) + gamma * weight * s for o, s in zip(outcome, scores, strict=True)]
    return GroupRewards(
        rewards=rewards,
        gamma=gamma,
        weight=weight,
        mu_c=mu_c,
        mu_w=mu_w,
        thinking_mean=thinking_mean,
        num_scored=len(received),
    )


def outcome_only(outcome: Sequence[float]) -> GroupRewards:
    """Rewards of a group whose RM call failed: the outcome alone (gamma 1, weight 0), flagged."""
    if not outcome:
        raise ValueError("a group needs at least one rollout")
    return GroupRewards(rewards=[float(o) for o in outcome], gamma=1.0, weight=0.0, fallback=True)


def step_trust_metrics(groups: Sequence[GroupRewards], fallback_groups: int) -> dict[str, float]:
    """Per-step Trust-GRPO metrics (keys from `sophiavl_cli.metrics`).

    `groups` is the step's groups; those built by `outcome_only` are left out of the trust
    statistics (they had no thinking reward) but count in `reward/final`. `fallback_groups` is the
    number of groups that fell back because of RM failures. A statistic with nothing to average
    (every group fell back; no group had a correct rollout, for mu_correct) is left out, not logged as 0.
    """
    trusted = [g for g in groups if not g.fallback]
    metrics: dict[str, float] = {TRUST_FALLBACK_GROUPS: float(fallback_groups)}
    finals = [r for g in groups for r in g.rewards]
    if finals:
        metrics[REWARD_FINAL] = statistics.fmean(finals)
    if trusted:
        metrics[TRUST_GAMMA] = statistics.fmean(g.gamma for g in trusted)
        metrics[TRUST_DISTRUSTED_FRACTION] = sum(g.distrusted for g in trusted) / len(trusted)
        metrics[TRUST_WEIGHT] = trusted[-1].weight
    for key, values in (
        (TRUST_MU_CORRECT, [g.mu_c for g in trusted if g.mu_c is not None]),
        (TRUST_MU_WRONG, [g.mu_w for g in trusted if g.mu_w is not None]),
    ):
        if values:
            metrics[key] = statistics.fmean(values)
    scored = sum(g.num_scored for g in trusted)
    if scored:
        total = sum(g.thinking_mean * g.num_scored for g in trusted if g.thinking_mean is not None)
        metrics[REWARD_THINKING] = total / scored
    return metrics
