"""Policy loss, KL estimators, entropy and token log-probs on small hand-computed tensors."""

from __future__ import annotations

import math

import pytest
import torch

from sophiavl_cli.algo.losses import entropy_from_logits, kl_penalty, masked_mean, policy_loss, token_logprobs

torch.set_num_threads(1)


def test_masked_mean_ignores_masked_positions_even_when_they_are_infinite() -> None:
    x = torch.tensor([[1.0, 3.0, -math.inf], [5.0, math.nan, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert masked_mean(x, mask).item() == pytest.approx(3.0)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_ratio_one_gives_minus_mean_advantage_over_tokens() -> None:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -0.5]], requires_grad=True)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    advantages = torch.tensor([2.0, -1.0])
    loss, metrics = policy_loss(logp, logp.detach(), advantages, mask, clip_ratio=0.2)
    # token mean over 5 tokens: 2 tokens of adv 2, 3 tokens of adv -1
    assert loss.item() == pytest.approx(-(2 * 2.0 + 3 * -1.0) / 5)
    assert metrics["clip_fraction"].item() == 0.0
    assert metrics["approx_kl"].item() == pytest.approx(0.0)
    loss.backward()
    # d loss / d logp = -adv * ratio / n_tokens on unmasked tokens
    expected = torch.tensor([[-0.4, -0.4, 0.0], [0.2, 0.2, 0.2]])
    torch.testing.assert_close(logp.grad, expected)


def test_clipping_stops_the_gradient_beyond_the_trust_region_on_both_sides() -> None:
    old = torch.zeros(1, 4)
    # ratios 1.5 (adv > 0: clipped at 1.2), 0.5 (adv < 0: clipped at 0.8),
    # 1.5 with adv < 0 and 0.5 with adv > 0: the unclipped term is the larger loss, kept
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.5, 0.5]])).requires_grad_(True)
    advantages = torch.tensor([[1.0, -1.0, -1.0, 1.0]])
    mask = torch.ones(1, 4)
    loss, metrics = policy_loss(logp, old, advantages, mask, clip_ratio=0.2)
    assert loss.item() == pytest.approx((-1.2 + 0.8 + 1.5 - 0.5) / 4)
    assert metrics["clip_fraction"].item() == pytest.approx(0.5)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, 1.5 / 4, -0.5 / 4]]))


def test_extreme_log_ratios_are_clamped_so_the_loss_stays_finite() -> None:
    logp = torch.tensor([[0.0, -200.0]])
    old = torch.tensor([[-200.0, 0.0]])
    loss, metrics = policy_loss(logp, old, torch.tensor([-1.0]), torch.ones(1, 2), clip_ratio=0.2)
    assert math.isfinite(loss.item())
    assert loss.item() == pytest.approx((math.exp(10) + 0.8) / 2)
    assert math.isfinite(metrics["approx_kl"].item())


def test_approx_kl_is_k3_of_old_against_new() -> None:
    logp = torch.tensor([[math.log(2.0)]])
    _, metrics = policy_loss(logp, torch.zeros(1, 1), torch.tensor([0.0]), torch.ones(1, 1), clip_ratio=0.2)
    assert metrics["approx_kl"].item() == pytest.approx(2.0 - 1.0 - math.log(2.0))


def test_low_var_kl_is_zero_at_equality_and_k3_elsewhere() -> None:
    logp = torch.tensor([[-1.0, -1.0, -2.0]])
    ref = torch.tensor([[-1.0, -2.0, -1.0]])
    got = kl_penalty(logp, ref, "low_var_kl")
    expected = torch.tensor([[0.0, math.exp(-1.0) + 1.0 - 1.0, math.exp(1.0) - 1.0 - 1.0]])
    torch.testing.assert_close(got, expected)
    assert (got >= 0).all()


def test_low_var_kl_is_clamped_for_far_apart_log_probs() -> None:
    got = kl_penalty(torch.tensor([[-100.0]]), torch.tensor([[0.0]]), "low_var_kl")
    assert got.item() == 10.0


def test_other_kl_estimators_follow_their_formulas() -> None:
    logp, ref = torch.tensor([[-1.0, -3.0]]), torch.tensor([[-2.0, -1.0]])
    torch.testing.assert_close(kl_penalty(logp, ref, "kl"), torch.tensor([[1.0, -2.0]]))
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(kl_penalty(logp, ref, "mse"), torch.tensor([[0.5, 2.0]]))
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_penalty(logp, ref, "k4")


def test_entropy_of_uniform_and_peaked_distributions() -> None:
    logits = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [1000.0, 0.0, 0.0, 0.0]]])  # [1, 2, 4]
    got = entropy_from_logits(logits)
    assert got.shape == (1, 2)
    torch.testing.assert_close(got, torch.tensor([[math.log(4.0), 0.0]]))


def test_entropy_in_chunks_equals_entropy_at_once_and_keeps_gradients() -> None:
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=torch.bfloat16, requires_grad=True)
    whole = entropy_from_logits(logits, chunk_rows=None)
    chunked = entropy_from_logits(logits, chunk_rows=4)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, whole)
    reference = torch.distributions.Categorical(logits=logits.float()).entropy()
    torch.testing.assert_close(whole, reference)
    chunked.sum().backward()
    assert logits.grad is not None and logits.grad.shape == logits.shape


def test_token_logprobs_pick_the_label_under_temperature() -> None:
    logits = torch.tensor([[[2.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])  # [1, 2, 3]
    labels = torch.tensor([[0, 2]])
    got = token_logprobs(logits, labels, temperature=2.0, chunk_rows=1)
    expected = torch.log_softmax(logits / 2.0, dim=-1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(got, expected)
    assert got.shape == (1, 2)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        token_logprobs(logits, labels, temperature=0.0)
