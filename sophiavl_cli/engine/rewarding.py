"""One step's rewards on the driver: outcome scores, thinking-RM requests, Trust-GRPO, advantages.

Split in three so the driver can overlap the slow part: `score_outcomes` (pure, fast),
`thinking_requests` (which rollouts go to the RM; the driver submits them without waiting and
runs the log-prob passes meanwhile), then `combine` once the RM answers. A group with any failed
RM call falls back to its outcome rewards (`outcome_only`) and is counted, never scored as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from sophiavl_cli.algo.advantages import grpo_advantages
from sophiavl_cli.algo.trust_grpo import (
    GroupRewards,
    group_rewards,
    needs_thinking,
    outcome_only,
    step_trust_metrics,
)
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.metrics import (
    ADV_ABS_MEAN,
    ADV_ZERO_FRACTION,
    REWARD_ACCURACY,
    REWARD_FINAL,
    REWARD_FORMAT,
    REWARD_OUTCOME,
    TRUST_THINKING_COVERAGE,
)
from sophiavl_cli.rewards.outcome import OutcomeScorer
from sophiavl_cli.rewards.thinking import ThinkingResult, ThinkingSample


@dataclass(frozen=True)
class OutcomeBatch:
    """Outcome rewards of a step's N = prompts x n rollouts (row i = prompt i // n, sample i % n)."""

    overall: np.ndarray  # float64 [N]
    format: np.ndarray  # float64 [N]
    accuracy: np.ndarray  # float64 [N]


def score_outcomes(
    scorer: OutcomeScorer,
    responses: Sequence[str],
    answers: Sequence[str],
    problem_types: Sequence[str],
    *,
    format_gate: bool = True,
) -> OutcomeBatch:
    """Score every response against its prompt's answer (answers/types given per rollout)."""
    rows = []
    for response, answer, problem_type in zip(responses, answers, problem_types, strict=True):
        text = response if format_gate else ungated(response)
        rows.append(scorer.score_detailed(text, answer, problem_type))
    return OutcomeBatch(
        overall=np.asarray([r["overall"] for r in rows], dtype=np.float64),
        format=np.asarray([r["format"] for r in rows], dtype=np.float64),
        accuracy=np.asarray([r["accuracy"] for r in rows], dtype=np.float64),
    )


def ungated(response: str) -> str:
    """The response re-wrapped so it passes the format gate, its answer unchanged.

    With `reward.format_gate: false` the answer is the first `<answer>` block when there is one,
    else the whole response; the per-type scorer then sees it as if the format were right.
    """
    from sophiavl_cli.rewards.format import extract_answer

    # first: the same block the gated reward scores (rewards/outcome.py)
    answer = extract_answer(response, which="first")
    return f"<think></think><answer>{response if answer is None else answer}</answer>"


def thinking_requests(
    outcome: np.ndarray, n: int, mode: str, make_sample: Callable[[int], ThinkingSample]
) -> tuple[list[ThinkingSample], list[int]]:
    """The RM samples to send and the rollout positions they belong to, in rollout order."""
    samples, positions = [], []
    for start in range(0, len(outcome), n):
        for k, wanted in enumerate(needs_thinking(outcome[start : start + n].tolist(), mode)):
            if wanted:
                samples.append(make_sample(start + k))
                positions.append(start + k)
    return samples, positions


@dataclass(frozen=True)
class StepRewards:
    final: np.ndarray  # float64 [N]
    advantages: np.ndarray  # float32 [N]
    thinking: list[float | None]  # RM score per rollout (None: not asked or failed)
    groups: list[GroupRewards]
    rm_calls: int
    rm_failures: int


def combine(
    recipe: Recipe,
    outcome: np.ndarray,
    n: int,
    step: int,
    total_steps: int,
    positions: Sequence[int] = (),
    results: Sequence[ThinkingResult] = (),
) -> StepRewards:
    """Trust-GRPO rewards per group (outcome only when the trust reward is off) and group advantages."""
    trust = recipe.algorithm.trust
    thinking: list[float | None] = [None] * len(outcome)
    failed_groups: set[int] = set()
    for position, result in zip(positions, results, strict=True):
        if result.ok:
            thinking[position] = result.score
        else:
            failed_groups.add(position // n)
    horizon = float(total_steps) if trust.horizon == "total_steps" else float(trust.horizon)
    groups = []
    for g, start in enumerate(range(0, len(outcome), n)):
        group_outcome = outcome[start : start + n].tolist()
        if not trust.enable or g in failed_groups:
            groups.append(outcome_only(group_outcome) if trust.enable else _plain(group_outcome))
            continue
        groups.append(
            group_rewards(
                group_outcome,
                thinking[start : start + n],
                step,
                alpha=trust.alpha,
                horizon=horizon,
                mode=trust.mode,
                use_trust=trust.enable_trust,
                anneal=trust.enable_annealing,
            )
        )
    final = np.asarray([r for group in groups for r in group.rewards], dtype=np.float64)
    group_ids = np.repeat(np.arange(len(groups)), n)
    advantages = np.asarray(grpo_advantages(final, group_ids), dtype=np.float32)
    return StepRewards(
        final=final,
        advantages=advantages,
        thinking=thinking,
        groups=groups,
        rm_calls=len(results),
        rm_failures=sum(not r.ok for r in results),
    )


def _plain(outcome: list[float]) -> GroupRewards:
    """GRPO without the thinking reward: R = outcome, nothing distrusted."""
    return GroupRewards(rewards=[float(o) for o in outcome], gamma=1.0, weight=0.0)


def reward_metrics(outcome: OutcomeBatch, rewards: StepRewards, trust_enabled: bool) -> dict[str, float]:
    """reward/*, trust/* and adv/* metrics of one step (means over rollouts; trust stats over groups)."""
    metrics = {
        REWARD_OUTCOME: float(outcome.overall.mean()),
        REWARD_FORMAT: float(outcome.format.mean()),
        REWARD_ACCURACY: float(outcome.accuracy.mean()),
        REWARD_FINAL: float(rewards.final.mean()),
        ADV_ABS_MEAN: float(np.abs(rewards.advantages).mean()),
        ADV_ZERO_FRACTION: float(np.mean(np.abs(rewards.advantages) < 1e-6)),
    }
    if trust_enabled:
        fallback = sum(g.fallback for g in rewards.groups)
        metrics |= step_trust_metrics(rewards.groups, fallback)
        metrics[TRUST_THINKING_COVERAGE] = thinking_coverage(len(rewards.groups), fallback)
    return metrics


def thinking_coverage(groups: int, fallback_groups: int) -> float:
    """Share of a step's groups that used the thinking reward (1.0 for a step without groups)."""
    return 1.0 - fallback_groups / groups if groups else 1.0
