"""One step's rewards on the driver: outcome scores, thinking-RM requests, Trust-GRPO, advantages.

Split in three so the driver can overlap the slow part: `score_outcomes` (pure, fast),
`thinking_requests` (which rollouts go to the RM; the driver submits them without waiting and
runs the log-prob passes meanwhile), then `combine` once the RM answers. A group with any failed
RM call falls back to its outcome rewards (`outcome_only`) and is counted, never scored as 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from sophiavl_cli.algo.estimators import (
    EstimatorInput,
    compute_advantages,
    length_mask,
    outcome_token_rewards,
)
from sophiavl_cli.algo.overlong import overlong_penalty
from sophiavl_cli.algo.trust_grpo import (
    GroupRewards,
    group_rewards,
    needs_thinking,
    outcome_only,
    step_trust_metrics,
)
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.metrics.keys import (
    ADV_ABS_MEAN,
    ADV_ZERO_FRACTION,
    REWARD_ACCURACY,
    REWARD_FINAL,
    REWARD_FORMAT,
    REWARD_OUTCOME,
    REWARD_OVERLONG_PENALTY,
    REWARD_OVERLONG_SHARE,
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
    final: np.ndarray  # float64 [N]: Trust-GRPO reward (+ overlong penalty); what the estimator sees
    advantages: np.ndarray  # float32 [N]: each rollout's advantage (its token mean when per token)
    thinking: list[float | None]  # RM score per rollout (None: not asked or failed)
    groups: list[GroupRewards]
    rm_calls: int
    rm_failures: int
    overlong: np.ndarray | None = None  # float64 [N] penalty added to `final`, when enabled
    token_advantages: np.ndarray | None = None  # float64 [N, T], T = longest response


def estimate_advantages(
    recipe: Recipe,
    final: np.ndarray,
    lengths: np.ndarray,
    n: int,
    token_kl: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Advantages [N, T] of `algorithm.adv_estimator` on the final rewards.

    The final reward sits on each rollout's last token; with `algorithm.kl_in_reward` every token
    also carries -kl_coef * KL(old || ref) (`token_kl`, one array per rollout), as verl's
    `apply_kl_penalty` does. Rollout i belongs to group i // n.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    width = max(int(lengths.max(initial=0)), 1)
    rewards = outcome_token_rewards(final, lengths, width)  # [N, T]
    mask = length_mask(lengths, width)  # [N, T]
    if token_kl is not None:
        for i, kl in enumerate(token_kl):
            rewards[i, : len(kl)] -= recipe.algorithm.kl_coef * np.asarray(kl, dtype=np.float64)
    batch = EstimatorInput(rewards, mask, np.arange(len(final)) // n, gamma=recipe.algorithm.gamma)
    return compute_advantages(recipe.algorithm.adv_estimator, batch)


def per_rollout(token_advantages: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Each rollout's mean advantage over its tokens (its one value for sequence estimators): [N]."""
    lengths = np.asarray(lengths, dtype=np.float64)
    return (token_advantages.sum(axis=1) / np.maximum(lengths, 1.0)).astype(np.float32)


def worker_advantages(token_advantages: np.ndarray, lengths: Sequence[int]) -> list[float | np.ndarray]:
    """What crosses Ray per rollout: one float when its advantage is the same on every token, else its array."""
    out: list[float | np.ndarray] = []
    for row, length in zip(token_advantages, lengths, strict=True):
        values = row[:length]
        if length == 0 or np.all(values == values[0]):
            out.append(float(values[0]) if length else 0.0)
        else:
            out.append(values.astype(np.float32))
    return out


def with_token_kl(
    recipe: Recipe, rewards: StepRewards, lengths: np.ndarray, n: int, token_kl: Sequence[np.ndarray]
) -> StepRewards:
    """`rewards` with advantages recomputed on the KL-penalised token rewards (kl_in_reward)."""
    tokens = estimate_advantages(recipe, rewards.final, lengths, n, token_kl)
    return replace(rewards, token_advantages=tokens, advantages=per_rollout(tokens, lengths))


def combine(
    recipe: Recipe,
    outcome: np.ndarray,
    n: int,
    step: int,
    total_steps: int,
    positions: Sequence[int] = (),
    results: Sequence[ThinkingResult] = (),
    lengths: Sequence[int] | None = None,
) -> StepRewards:
    """Trust-GRPO rewards per group (outcome only when the trust reward is off), the overlong
    penalty on top when enabled, and the estimator's advantages (`lengths`: response tokens per
    rollout; None treats every response as one token)."""
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
    sizes = np.ones(len(final), dtype=np.int64) if lengths is None else np.asarray(lengths, dtype=np.int64)
    penalty = None
    overlong = recipe.reward.overlong
    if overlong.enable:
        penalty = overlong_penalty(
            sizes,
            max_length=recipe.data.max_response_length,
            buffer_length=overlong.buffer_length,
            penalty_factor=overlong.penalty_factor,
        )
        final = final + penalty
    tokens = estimate_advantages(recipe, final, sizes, n)
    return StepRewards(
        final=final,
        advantages=per_rollout(tokens, sizes),
        thinking=thinking,
        groups=groups,
        rm_calls=len(results),
        rm_failures=sum(not r.ok for r in results),
        overlong=penalty,
        token_advantages=tokens,
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
        metrics[REWARD_FINAL] = float(rewards.final.mean())  # with the overlong penalty, if any
    if rewards.overlong is not None:
        metrics[REWARD_OVERLONG_PENALTY] = float(rewards.overlong.mean())
        metrics[REWARD_OVERLONG_SHARE] = float(np.mean(rewards.overlong < 0))
    return metrics


def thinking_coverage(groups: int, fallback_groups: int) -> float:
    """Share of a step's groups that used the thinking reward (1.0 for a step without groups)."""
    return 1.0 - fallback_groups / groups if groups else 1.0
