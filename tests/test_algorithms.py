"""Advantage estimators (GRPO pass@k included), loss aggregation, PPO clip-higher / dual clip, GSPO,
CISPO, SAPO, overlong penalty and dynamic sampling against hand-computed values on small tensors
(docs/method.md has the formulas; tests/test_algorithms_vs_peers.py compares with EasyR1 and verl).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sophiavl_cli.algo.dynamic_sampling import GroupPool, informative
from sophiavl_cli.algo.estimators import (
    AdvEstimator,
    EstimatorInput,
    compute_advantages,
    length_mask,
    outcome_token_rewards,
)
from sophiavl_cli.algo.losses import (
    AggScale,
    ClipConfig,
    LossAgg,
    aggregate,
    kl_penalty,
    policy_loss_terms,
)
from sophiavl_cli.algo.overlong import overlong_penalty

torch.set_num_threads(1)


def _outcome(
    scores: list[float], lengths: list[int], groups: list[int], gamma: float = 1.0
) -> EstimatorInput:
    width = max(max(lengths), 1)
    return EstimatorInput(
        outcome_token_rewards(np.array(scores), np.array(lengths), width),
        length_mask(np.array(lengths), width),
        np.array(groups),
        gamma,
    )


# ----------------------------------------------------------------------------- estimators


def test_grpo_dr_grpo_and_rloo_on_one_group_of_three() -> None:
    batch = _outcome([1.0, 0.0, 0.5], [2, 1, 3], [7, 7, 7])
    grpo = compute_advantages("grpo", batch)
    std = 0.5  # unbiased std of (1, 0, 0.5)
    np.testing.assert_allclose(grpo[:, 0], [0.5 / (std + 1e-6), -0.5 / (std + 1e-6), 0.0])
    np.testing.assert_allclose(grpo[0], [0.5 / (std + 1e-6)] * 2 + [0.0])  # broadcast, zero past the end
    np.testing.assert_allclose(compute_advantages("dr_grpo", batch)[:, 0], [0.5, -0.5, 0.0])
    # leave-one-out: 1 - (0 + 0.5) / 2, 0 - (1 + 0.5) / 2, 0.5 - (1 + 0) / 2
    np.testing.assert_allclose(compute_advantages("rloo", batch)[:, 0], [0.75, -0.75, 0.0])


@pytest.mark.parametrize("name", [e.value for e in AdvEstimator if e is not AdvEstimator.REINFORCE_PLUS_PLUS])
def test_groups_of_one_and_tied_groups_get_zero(name: str) -> None:
    """Every group-based estimator; plain REINFORCE++ has no groups (its baseline is the batch)."""
    batch = _outcome([0.7, 0.3, 0.3, 0.3], [1, 2, 2, 2], [0, 1, 1, 1])
    np.testing.assert_allclose(compute_advantages(name, batch), np.zeros((4, 2)), atol=1e-6)


@pytest.mark.parametrize("name", [e.value for e in AdvEstimator if e is not AdvEstimator.REINFORCE_PLUS_PLUS])
def test_all_equal_groups_get_exactly_zero_not_rounding(name: str) -> None:
    """The group mean of equal floats can miss them in the last bit: 8 x 0.7 gave ~1e-10 under GRPO."""
    rewards = [0.7] * 8 + [0.1] * 3 + [1 / 3] * 5
    batch = _outcome(rewards, [1] * 16, [0] * 8 + [1] * 3 + [2] * 5)
    assert np.all(compute_advantages(name, batch) == 0.0)


def test_an_empty_response_keeps_its_reward_in_the_group_but_gets_no_advantage() -> None:
    batch = _outcome([1.0, 0.0], [2, 0], [0, 0])
    got = compute_advantages("dr_grpo", batch)
    np.testing.assert_allclose(got, [[0.5, 0.5], [0.0, 0.0]])


def test_reinforce_plus_plus_whitens_discounted_returns_over_the_batch_tokens() -> None:
    # row 0: 2 tokens, reward 1 on its last; row 1: 1 token, reward 0; row 2: empty
    got = compute_advantages("reinforce_plus_plus", _outcome([1.0, 0.0, 5.0], [2, 1, 0], [0, 1, 2]))
    # masked returns 1, 1, 0: mean 2/3, unbiased variance 1/3
    high, low = (1 - 2 / 3) / math.sqrt(1 / 3 + 1e-8), (0 - 2 / 3) / math.sqrt(1 / 3 + 1e-8)
    np.testing.assert_allclose(got, [[high, high], [low, 0.0], [0.0, 0.0]], rtol=1e-6)
    # gamma 0.5: returns 0.5, 1 on row 0
    got = compute_advantages("reinforce_plus_plus", _outcome([1.0, 0.0], [2, 1], [0, 1], gamma=0.5))
    values = np.array([0.5, 1.0, 0.0])
    mean, var = values.mean(), values.var(ddof=1)
    expected = (values - mean) / np.sqrt(var + 1e-8)
    np.testing.assert_allclose(got, [[expected[0], expected[1]], [expected[2], 0.0]], rtol=1e-6)


def test_reinforce_plus_plus_baseline_subtracts_the_group_mean_then_whitens() -> None:
    got = compute_advantages("reinforce_plus_plus_baseline", _outcome([1.0, 0.0, 0.5], [1, 1, 1], [0, 0, 1]))
    # centred 0.5, -0.5 and 0 (group of one); mean 0, unbiased variance 0.25
    np.testing.assert_allclose(got[:, 0], np.array([0.5, -0.5, 0.0]) / math.sqrt(0.25 + 1e-8))


def test_kl_in_the_reward_makes_reinforce_plus_plus_advantages_per_token() -> None:
    batch = _outcome([1.0, 0.0], [2, 2], [0, 1])
    rewards = batch.token_rewards - 0.1 * np.array([[1.0, 0.0], [0.0, 2.0]])
    got = compute_advantages("reinforce_plus_plus", EstimatorInput(rewards, batch.mask, batch.group_ids))
    returns = np.array([[0.9, 1.0], [-0.2, -0.2]])  # returns-to-go
    expected = (returns - returns.mean()) / np.sqrt(returns.var(ddof=1) + 1e-8)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_grpo_passk_gives_the_gap_to_the_runner_up_to_the_best_rollout_only() -> None:
    # group 0: best 0.9 over 0.5; group 1: binary, one correct; group 2: top two tie; group 3: alone
    scores = [0.5, 0.9, 0.2, 0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.3, 0.8]
    groups = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 3]
    got = compute_advantages("grpo_passk", _outcome(scores, [2] * 10 + [1], groups))
    std0, std1 = 0.35118845842842466, 0.5  # unbiased std of (0.5, 0.9, 0.2) and (0, 1, 0, 0)
    expected = np.zeros(11)
    expected[1], expected[4] = 0.4 / (std0 + 1e-6), 1.0 / (std1 + 1e-6)
    np.testing.assert_allclose(got[:, 0], expected)
    np.testing.assert_allclose(got[:, 1], np.r_[expected[:10], 0.0])  # zero past the response's end


def test_grpo_passk_on_rows_in_any_order_and_an_empty_response() -> None:
    # the best rollout of a group need not come first, and an empty response can be the best
    batch = _outcome([0.0, 2.0, 1.0, 3.0], [1, 0, 1, 1], [5, 9, 5, 9])
    got = compute_advantages("grpo_passk", batch)
    np.testing.assert_allclose(
        got[:, 0], [0.0, 0.0, 1.0 / (math.sqrt(0.5) + 1e-6), 1.0 / (math.sqrt(0.5) + 1e-6)]
    )


def test_unknown_estimator_is_named() -> None:
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        compute_advantages("ppo", _outcome([1.0], [1], [0]))


# ----------------------------------------------------------------------------- aggregation

VALUES = torch.tensor([[1.0, 2.0, math.inf], [3.0, math.nan, 9.0], [4.0, 4.0, 4.0]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0], [0, 0, 0]])  # the last row is empty


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("token-mean", (1 + 2 + 3) / 3),
        ("seq-mean-token-mean", (1.5 + 3 + 0) / 3),
        ("seq-mean-token-sum", (3 + 3 + 0) / 3),
        ("seq-mean-token-sum-norm", (3 + 3 + 0) / (3 * 4)),
    ],
)
def test_aggregation_modes_by_hand(mode: str, expected: float) -> None:
    got = aggregate(VALUES, MASK, mode, AggScale.local(MASK, max_length=4))
    assert got.item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", [m.value for m in LossAgg])
def test_shares_of_any_split_sum_to_the_whole(mode: str) -> None:
    scale = AggScale.local(MASK, max_length=4)
    whole = aggregate(VALUES, MASK, mode, scale)
    for pieces in (
        [slice(0, 1), slice(1, 3)],
        [slice(0, 2), slice(2, 3)],
        [slice(i, i + 1) for i in range(3)],
    ):
        total = sum(aggregate(VALUES[p], MASK[p], mode, scale) for p in pieces)
        assert total.item() == pytest.approx(whole.item())


# ----------------------------------------------------------------------------- policy losses


def _ppo(
    ratios: list[float], advantages: list[float], clip: ClipConfig
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    logp = torch.log(torch.tensor([ratios])).requires_grad_(True)
    terms, indicators = policy_loss_terms(
        "ppo_clip",
        logp,
        torch.zeros(1, len(ratios)),
        torch.tensor([advantages]),
        torch.ones(1, len(ratios)),
        clip,
    )
    terms.sum().backward()
    return terms.detach(), logp.grad, indicators


def test_clip_higher_lets_positive_advantages_grow_to_one_plus_high() -> None:
    terms, grad, indicators = _ppo(
        [1.25, 1.3, 0.75, 0.7], [1.0, 1.0, -1.0, 1.0], ClipConfig(low=0.2, high=0.28)
    )
    # 1.25 < 1.28 unclipped; 1.3 clipped at 1.28; A < 0 at 0.75 clipped at 0.8; A > 0 at 0.7 unclipped
    torch.testing.assert_close(terms, torch.tensor([[-1.25, -1.28, 0.8, -0.7]]))
    torch.testing.assert_close(grad, torch.tensor([[-1.25, 0.0, 0.0, -0.7]]))
    torch.testing.assert_close(indicators["clip_fraction"], torch.tensor([[0.0, 1.0, 1.0, 0.0]]))
    assert "clip_fraction_dual" not in indicators


def test_dual_clip_caps_negative_advantage_terms_at_c() -> None:
    terms, grad, indicators = _ppo(
        [5.0, 2.0, 5.0], [-1.0, -1.0, 1.0], ClipConfig(low=0.2, high=0.2, dual=3.0)
    )
    # A < 0, ratio 5: max(5, 1.2) = 5 > 3 -> 3 (no gradient); ratio 2 -> 2; A > 0 is never dual-clipped
    torch.testing.assert_close(terms, torch.tensor([[3.0, 2.0, -1.2]]))
    torch.testing.assert_close(grad, torch.tensor([[0.0, 2.0, 0.0]]))
    torch.testing.assert_close(indicators["clip_fraction_dual"], torch.tensor([[1.0, 0.0, 0.0]]))


def test_gspo_uses_the_sequence_ratio_and_clips_whole_sequences() -> None:
    old = torch.zeros(2, 3)
    logp = torch.tensor([[0.1, 0.3, 9.0], [1e-4, -1e-4, 0.0]], requires_grad=True)  # masked third token
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([1.0, -2.0])
    clip = ClipConfig(low=3e-4, high=4e-4)
    terms, indicators = policy_loss_terms("gspo", logp, old, advantages, mask, clip)
    loss = aggregate(terms, mask, "seq-mean-token-mean", AggScale.local(mask))
    loss.backward()
    # row 0: s = exp(0.2) > 1 + 4e-4, A > 0: clipped, no gradient; row 1: s = exp(0) = 1, unclipped
    s1 = 1.0
    assert loss.item() == pytest.approx((-(1 + 4e-4) + 2.0 * s1) / 2)
    torch.testing.assert_close(logp.grad[0], torch.zeros(3))
    # d/dlogp of 0.5 * (-A s) with s = exp(mean over 3 tokens): 0.5 * 2 * s / 3 per token
    torch.testing.assert_close(logp.grad[1], torch.full((3,), 0.5 * 2.0 * s1 / 3))
    assert indicators["clip_fraction"][0, :2].tolist() == [1.0, 1.0]


def test_gspo_gradient_equals_the_papers_sequence_objective() -> None:
    torch.manual_seed(0)
    logp = (torch.randn(3, 4) * 1e-4).requires_grad_(True)
    old = torch.zeros(3, 4)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    advantages = torch.tensor([0.5, -1.0, 2.0])
    terms, _ = policy_loss_terms("gspo", logp, old, advantages, mask, ClipConfig(0.2, 0.2))
    aggregate(terms, mask, "seq-mean-token-mean", AggScale.local(mask)).backward()
    ours = logp.grad.clone()
    logp.grad = None
    seq = ((logp - old) * mask).sum(-1) / mask.sum(-1)  # every ratio is within the clip range here
    (-(advantages * torch.exp(seq))).mean().backward()
    torch.testing.assert_close(ours, logp.grad)


def _loss(
    kind: str, ratios: list[float], advantages: list[float], clip: ClipConfig
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Per-token terms, d(sum of terms)/d logp and indicators of one row with old log-probs 0."""
    logp = torch.log(torch.tensor([ratios], dtype=torch.float64)).requires_grad_(True)
    terms, indicators = policy_loss_terms(
        kind,
        logp,
        torch.zeros_like(logp),
        torch.tensor([advantages], dtype=torch.float64),
        torch.ones_like(logp),
        clip,
    )
    terms.sum().backward()
    return terms.detach(), logp.grad, indicators


def test_cispo_bounds_each_weight_and_keeps_every_tokens_gradient() -> None:
    ratios, advantages = [0.5, 1.0, 1.5, 6.0], [1.0, -1.0, 1.0, 2.0]
    terms, grad, indicators = _loss("cispo", ratios, advantages, ClipConfig(low=0.2, high=0.28))
    weights = [0.8, 1.0, 1.28, 1.28]  # clip(r, 0.8, 1.28)
    expected = [-a * w * math.log(r) for r, a, w in zip(ratios, advantages, weights, strict=True)]
    torch.testing.assert_close(terms, torch.tensor([expected], dtype=torch.float64))
    # -A w: nonzero on the clipped tokens too, where PPO's gradient would be 0 (A > 0, r > 1 + high)
    torch.testing.assert_close(grad, torch.tensor([[-0.8, 1.0, -1.28, -2.56]], dtype=torch.float64))
    assert indicators["clip_fraction"].tolist() == [[1.0, 0.0, 1.0, 1.0]]
    _, ppo_grad, _ = _loss("ppo_clip", ratios, advantages, ClipConfig(low=0.2, high=0.28))
    assert ppo_grad[0, 2] == 0.0 and ppo_grad[0, 3] == 0.0


def test_cispo_with_low_one_has_no_lower_bound_and_huge_ratios_stay_finite() -> None:
    _, grad, indicators = _loss("cispo", [0.01, 1e30], [1.0, 1.0], ClipConfig(low=1.0, high=4.0))
    torch.testing.assert_close(grad, torch.tensor([[-0.01, -5.0]], dtype=torch.float64))
    assert indicators["clip_fraction"].tolist() == [[0.0, 1.0]]


def test_sapo_gate_is_the_policy_gradient_on_policy_and_decays_off_policy() -> None:
    clip = ClipConfig(tau_positive=1.0, tau_negative=1.05)
    terms, grad, indicators = _loss("sapo", [1.0, 1.0, 1.0], [2.0, -1.0, 0.0], clip)
    # f(1) = 4 / tau * sigmoid(0) = 2 / tau; df/dr(1) = 1, so the gradient is -A (PPO's at r = 1)
    torch.testing.assert_close(terms, torch.tensor([[-2.0 * 2.0, 2.0 / 1.05, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[-2.0, 1.0, 0.0]], dtype=torch.float64))
    assert "clip_fraction" not in indicators  # nothing is clipped
    # r = e with A = 1 (tau 1) and A = -1 (tau 1.05): d(-A f(r))/dlogp = -A * 4 s (1 - s) * r
    terms, grad, _ = _loss("sapo", [math.e, math.e], [1.0, -1.0], clip)
    s_pos, s_neg = 1 / (1 + math.exp(-(math.e - 1))), 1 / (1 + math.exp(-1.05 * (math.e - 1)))
    torch.testing.assert_close(terms, torch.tensor([[-4.0 * s_pos, 4.0 / 1.05 * s_neg]], dtype=torch.float64))
    torch.testing.assert_close(
        grad,
        torch.tensor(
            [[-4 * s_pos * (1 - s_pos) * math.e, 4 * s_neg * (1 - s_neg) * math.e]], dtype=torch.float64
        ),
    )
    assert abs(grad[0, 0]) < math.e and abs(grad[0, 1]) < abs(grad[0, 0])  # softer than r, harder for A < 0


@pytest.mark.parametrize("kind", ["cispo", "sapo"])
@pytest.mark.parametrize("mode", [m.value for m in LossAgg])
def test_cispo_and_sapo_ignore_masked_tokens_and_empty_rows(kind: str, mode: str) -> None:
    logp = torch.tensor([[-0.5, -math.inf], [-1.0, -2.0], [-math.inf, -math.inf]], requires_grad=True)
    old = torch.tensor([[-0.4, -1.0], [-1.0, -2.5], [-1.0, -1.0]])
    mask = torch.tensor([[1, 0], [1, 1], [0, 0]])  # the last row is empty
    terms, _ = policy_loss_terms(kind, logp, old, torch.tensor([1.0, -0.5, 3.0]), mask, ClipConfig())
    loss = aggregate(terms, mask, mode, AggScale.local(mask, max_length=2))
    loss.backward()
    assert math.isfinite(loss.item())
    assert logp.grad[0, 1] == 0.0 and logp.grad[2].tolist() == [0.0, 0.0] and logp.grad[0, 0] != 0.0
    empty = torch.zeros(1, 2)
    terms, _ = policy_loss_terms(kind, logp[2:], old[2:], torch.tensor([3.0]), empty, ClipConfig())
    assert aggregate(terms, empty, mode, AggScale.local(empty, max_length=2)).item() == 0.0


def test_kl_aliases_and_release_clamp() -> None:
    logp, ref = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -1.0]])
    for a, b in (("kl", "k1"), ("mse", "k2"), ("low_var_kl", "k3")):
        torch.testing.assert_close(kl_penalty(logp, ref, a), kl_penalty(logp, ref, b))
    # d = ref - logp = 15 is clamped to 10 before exp, then the result to 10
    assert kl_penalty(torch.tensor([[-15.0]]), torch.tensor([[0.0]]), "k3").item() == 10.0


# ----------------------------------------------------------------------------- DAPO parts


def test_overlong_penalty_is_linear_in_the_buffer() -> None:
    got = overlong_penalty(np.array([0, 4, 5, 6, 8]), max_length=8, buffer_length=4, penalty_factor=0.5)
    np.testing.assert_allclose(got, [0.0, 0.0, -0.125, -0.25, -0.5])
    with pytest.raises(ValueError, match="buffer_length"):
        overlong_penalty(np.array([1]), max_length=8, buffer_length=9)


def test_dynamic_sampling_keeps_informative_groups_in_order_and_tops_up_deterministically() -> None:
    assert not informative([1.0]) and not informative([0.5, 0.5]) and informative([0.5, 0.6])
    pool = GroupPool(target=3)
    pool.offer([[1, 1], [1, 0], [0, 0]])  # round 0: only group 1 differs
    assert not pool.full
    pool.offer([[0, 1], [0.2, 0.2], [1, 0]])  # round 1: groups 0 and 2
    assert pool.full and not pool.filled
    assert pool.take() == [(0, 1), (1, 0), (1, 2)]
    short = GroupPool(target=3)
    short.offer([[1, 1], [1, 0], [0, 0]])
    assert short.filled and short.take() == [(0, 0), (0, 1), (0, 2)]
    again = GroupPool(target=3)
    again.offer([[1, 1], [1, 0], [0, 0]])
    assert again.take() == short.take()
