"""Trust-GRPO reward combination and GRPO advantages against hand-computed groups."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sophiavl_cli.algo import (
    GroupRewards,
    annealed_weight,
    group_advantages,
    group_rewards,
    grpo_advantages,
    needs_thinking,
    outcome_only,
    step_trust_metrics,
)
from sophiavl_cli.metrics.registry import metric

HUGE = 1e12  # a horizon so long that the weight is alpha


# ----------------------------------------------------------------------------- needs_thinking


def test_paper_mode_asks_the_reward_model_about_every_rollout() -> None:
    assert needs_thinking([1.0, 0.0, 0.95, 0.05], "paper") == [True] * 4


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        ([1.0, 0.9, 0.95], [False, False, False]),  # every outcome >= 0.9
        ([0.0, 0.1, 0.05], [False, False, False]),  # every outcome <= 0.1
        ([1.0, 0.0, 0.2, 0.19], [True, False, True, False]),  # mixed: those >= 0.2
    ],
)
def test_release_mode_gates_rm_calls_like_the_released_code(
    outcome: list[float], expected: list[bool]
) -> None:
    assert needs_thinking(outcome, "release") == expected


def test_unknown_trust_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown trust mode 'papers'; use one of paper, release"):
        needs_thinking([1.0], "papers")


# ----------------------------------------------------------------------------- weights


def test_annealed_weight_decays_from_alpha_with_a_one_based_step() -> None:
    assert annealed_weight(1, alpha=0.3, horizon=1500) == pytest.approx(0.3 * math.exp(-1 / 1500))
    assert annealed_weight(1500, alpha=0.3, horizon=1500) == pytest.approx(0.3 / math.e)
    assert annealed_weight(1500, alpha=0.3, horizon=1500, anneal=False) == 0.3
    with pytest.raises(ValueError, match="1-based"):
        annealed_weight(0, alpha=0.3, horizon=10)
    with pytest.raises(ValueError, match="horizon"):
        annealed_weight(1, alpha=0.3, horizon=0)


# ----------------------------------------------------------------------------- paper mode


def test_thinking_rewards_that_agree_with_outcomes_are_trusted() -> None:
    g = group_rewards([1.0, 1.0, 0.0, 0.0], [0.9, 0.7, 0.3, 0.1], step=1, horizon=HUGE)
    assert g.gamma == 1.0
    assert (g.mu_c, g.mu_w) == pytest.approx((0.8, 0.2))
    assert g.rewards == pytest.approx([1.27, 1.21, 0.09, 0.03])
    assert not g.distrusted


def test_thinking_rewards_that_prefer_wrong_answers_are_distrusted_in_proportion() -> None:
    g = group_rewards([1.0, 0.0], [0.2, 0.8], step=10, horizon=100.0)
    weight = 0.3 * math.exp(-0.1)
    gamma = math.exp(0.2 - 0.8)
    assert g.weight == pytest.approx(weight)
    assert g.gamma == pytest.approx(gamma)
    assert g.rewards == pytest.approx([1.0 + gamma * weight * 0.2, gamma * weight * 0.8])
    assert g.distrusted


def test_a_tie_between_correct_and_wrong_thinking_means_full_trust() -> None:
    assert group_rewards([1.0, 0.0], [0.5, 0.5], step=1, horizon=HUGE).gamma == 1.0


@pytest.mark.parametrize("outcome", [[1.0, 1.0, 0.6], [0.0, 0.0, 0.4]])
def test_all_correct_or_all_wrong_group_keeps_gamma_one(outcome: list[float]) -> None:
    g = group_rewards(outcome, [0.1, 0.9, 0.5], step=1, horizon=HUGE)
    assert g.gamma == 1.0
    assert g.rewards == pytest.approx([o + 0.3 * t for o, t in zip(outcome, [0.1, 0.9, 0.5], strict=True)])
    assert (g.mu_c is None) != (g.mu_w is None)


def test_paper_mode_refuses_missing_thinking_rewards() -> None:
    with pytest.raises(ValueError, match=r"missing at \[1\]"):
        group_rewards([1.0, 0.0], [0.5, None], step=1, horizon=HUGE)


def test_mismatched_lengths_and_empty_groups_are_rejected() -> None:
    with pytest.raises(ValueError, match="2 outcome rewards but 1 thinking"):
        group_rewards([1.0, 0.0], [0.5], step=1, horizon=HUGE)
    with pytest.raises(ValueError, match="at least one rollout"):
        group_rewards([], [], step=1, horizon=HUGE)


def test_no_trust_ablation_fixes_gamma_at_one_but_reports_the_means() -> None:
    g = group_rewards([1.0, 0.0], [0.2, 0.8], step=1, horizon=HUGE, use_trust=False)
    assert g.gamma == 1.0
    assert (g.mu_c, g.mu_w) == pytest.approx((0.2, 0.8))
    assert g.rewards == pytest.approx([1.06, 0.24])


def test_no_annealing_ablation_keeps_the_weight_at_alpha() -> None:
    g = group_rewards([1.0, 0.0], [0.5, 0.5], step=10_000, horizon=10.0, alpha=0.5, anneal=False)
    assert g.weight == 0.5
    assert g.rewards == pytest.approx([1.25, 0.25])


# ----------------------------------------------------------------------------- release mode


@pytest.mark.parametrize("outcome", [[1.0, 0.95, 0.9], [0.0, 0.1, 0.05]])
def test_release_mode_keeps_outcomes_for_saturated_groups(outcome: list[float]) -> None:
    g = group_rewards(outcome, [None, None, None], step=1, horizon=HUGE, mode="release")
    assert g.rewards == outcome
    assert g.gamma == 1.0
    assert g.num_scored == 0


def test_release_mode_counts_unscored_rollouts_as_zero_thinking() -> None:
    # outcomes 0.3 and 0.6 are scored; 0.0 is not (< 0.2) and counts as 0
    g = group_rewards([0.6, 0.3, 0.0], [0.4, 0.9, None], step=1, horizon=HUGE, mode="release")
    mu_c, mu_w = 0.4, (0.9 + 0.0) / 2
    assert (g.mu_c, g.mu_w) == pytest.approx((mu_c, mu_w))
    gamma = math.exp(mu_c - mu_w)
    assert g.gamma == pytest.approx(gamma)
    assert g.rewards == pytest.approx([0.6 + gamma * 0.3 * 0.4, 0.3 + gamma * 0.3 * 0.9, 0.0])
    assert g.thinking_mean == pytest.approx(0.65)
    assert g.num_scored == 2


def test_release_mode_binary_rewards_never_distrust() -> None:
    # wrong rollouts are never scored, so mu_w = 0 <= mu_c
    outcome = [1.0, 0.0, 1.0, 0.0]
    thinking = [0.1 if needed else None for needed in needs_thinking(outcome, "release")]
    assert group_rewards(outcome, thinking, step=1, horizon=HUGE, mode="release").gamma == 1.0


def test_release_mode_without_a_correct_rollout_keeps_gamma_one() -> None:
    g = group_rewards([0.4, 0.3, 0.2], [0.1, 0.5, 0.9], step=1, horizon=HUGE, mode="release")
    assert g.gamma == 1.0
    assert g.mu_c is None
    assert g.rewards == pytest.approx([0.43, 0.45, 0.47])


# ----------------------------------------------------------------------------- fallback and metrics


def test_outcome_only_group_is_flagged_with_zero_weight() -> None:
    g = outcome_only([1.0, 0.0])
    assert g == GroupRewards(rewards=[1.0, 0.0], gamma=1.0, weight=0.0, fallback=True)


def test_step_metrics_average_over_groups_and_skip_fallbacks_in_trust_statistics() -> None:
    trusted = group_rewards([1.0, 0.0], [0.9, 0.1], step=1, horizon=HUGE)
    distrusted = group_rewards([1.0, 0.0], [0.2, 0.8], step=1, horizon=HUGE)
    one_sided = group_rewards([1.0, 1.0], [0.4, 0.6], step=1, horizon=HUGE)
    fallback = outcome_only([1.0, 0.0])
    metrics = step_trust_metrics([trusted, distrusted, one_sided, fallback], fallback_groups=1)
    assert metrics["trust/gamma"] == pytest.approx((1.0 + math.exp(-0.6) + 1.0) / 3)
    assert metrics["trust/distrusted_fraction"] == pytest.approx(1 / 3)
    assert metrics["trust/mu_correct"] == pytest.approx((0.9 + 0.2 + 0.5) / 3)
    assert metrics["trust/mu_wrong"] == pytest.approx((0.1 + 0.8) / 2)
    assert metrics["trust/weight"] == pytest.approx(0.3)
    assert metrics["reward/thinking"] == pytest.approx((0.9 + 0.1 + 0.2 + 0.8 + 0.4 + 0.6) / 6)
    assert metrics["trust/fallback_groups"] == 1.0
    finals = trusted.rewards + distrusted.rewards + one_sided.rewards + fallback.rewards
    assert metrics["reward/final"] == pytest.approx(sum(finals) / len(finals))
    for key in metrics:
        assert metric(key).key == key


def test_step_metrics_when_every_group_fell_back_report_only_the_fallbacks() -> None:
    metrics = step_trust_metrics([outcome_only([1.0, 0.0])], fallback_groups=1)
    assert metrics == {"trust/fallback_groups": 1.0, "reward/final": 0.5}


# ----------------------------------------------------------------------------- advantages


def test_group_advantages_use_the_unbiased_std() -> None:
    rewards = [1.0, 0.0, 0.0, 0.0]
    std = math.sqrt(((0.75**2) + 3 * (0.25**2)) / 3)
    assert group_advantages(rewards) == pytest.approx([0.75 / (std + 1e-6)] + [-0.25 / (std + 1e-6)] * 3)


def test_a_group_of_one_or_of_equal_rewards_has_zero_advantage() -> None:
    assert group_advantages([0.7]) == [0.0]
    assert group_advantages([0.5, 0.5, 0.5]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        group_advantages([])


def test_vectorised_advantages_match_the_per_group_ones_in_any_order() -> None:
    rng = np.random.default_rng(0)
    rewards = rng.random(13)
    group_ids = np.array(["p1"] * 5 + ["p2"] * 4 + ["p3"] * 3 + ["p4"])
    order = rng.permutation(13)
    got = grpo_advantages(rewards[order], group_ids[order])
    expected = np.empty(13)
    for gid in np.unique(group_ids):
        idx = np.flatnonzero(group_ids[order] == gid)
        expected[idx] = group_advantages(list(rewards[order][idx]))
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert got[group_ids[order] == "p4"] == 0.0


def test_vectorised_advantages_reject_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="1-D and equal length"):
        grpo_advantages(np.zeros(3), np.zeros(4))


def test_docstring_examples_hold() -> None:
    import doctest

    from sophiavl_cli.algo import advantages, trust_grpo

    for module in (trust_grpo, advantages):
        assert doctest.testmod(module).failed == 0
