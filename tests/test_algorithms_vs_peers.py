"""Our algorithms against our own ports of the peers' formulas, on random and edge inputs.

The ports below are written from reading EasyR1 (`verl/trainer/core_algos.py`), verl
(`verl/trainer/ppo/core_algos.py`) and the SophiaVL-R1 release (`verl/trainer/core_algos.py`):
loops and dicts as they have them, so an error in our vectorised versions cannot hide in a shared
helper. Where we differ on purpose (groups of one, clamps), the test pins the documented values
(docs/method.md, "Algorithms" and "KL: in the loss or in the reward").
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
import torch

from sophiavl_cli.algo.estimators import EstimatorInput, compute_advantages
from sophiavl_cli.algo.losses import AggScale, ClipConfig, aggregate, kl_penalty, policy_loss_terms

torch.set_num_threads(1)

# ----------------------------------------------------------------------------- peer ports


def _peer_masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (values * mask).sum(dim=dim) / (mask.sum(dim=dim) + 1e-8)


def _easyr1_average(values: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "token":
        return _peer_masked_mean(values, mask)
    return ((values * mask).sum(-1) / (mask.sum(-1) + 1e-8)).mean()


def easyr1_cispo_sapo(
    old: torch.Tensor, logp: torch.Tensor, adv: torch.Tensor, low: float, high: float, kind: str
) -> torch.Tensor:
    """EasyR1's per-token loss for `loss_type` cispo or sapo (tau_positive 1.0, tau_negative 1.05)."""
    log_ratio = logp - old
    ratio = torch.exp(torch.clamp(log_ratio, -20.0, 20.0))
    if kind == "cispo":
        clipped = torch.exp(torch.clamp(log_ratio, math.log(1.0 - low), math.log(1.0 + high)))
        return -adv * logp * clipped.detach()
    positive, negative = (adv >= 0).to(adv.dtype), (adv < 0).to(adv.dtype)
    gate_pos = 4.0 / 1.0 * torch.sigmoid(1.0 * (ratio - 1.0))
    gate_neg = 4.0 / 1.05 * torch.sigmoid(1.05 * (ratio - 1.0))
    return -adv * (positive * gate_pos + negative * gate_neg)


def verl_cispo(
    old: torch.Tensor, logp: torch.Tensor, adv: torch.Tensor, low: float, high: float
) -> torch.Tensor:
    """verl's per-token CISPO loss: the ratio clamped in ratio space (so `low` may exceed 1)."""
    ratio = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    return -torch.clamp(ratio, 1 - low, 1 + high).detach() * adv * logp


def easyr1_grpo_passk(scores: list[float], index: list[int], eps: float = 1e-6) -> list[float]:
    """EasyR1's grpo_passk on one scalar score per rollout (it asserts every group has 2 or more)."""
    advantages = [0.0] * len(scores)
    id2score: dict[int, list[float]] = defaultdict(list)
    id2indices: dict[int, list[int]] = defaultdict(list)
    for i, (score, idx) in enumerate(zip(scores, index, strict=True)):
        id2score[idx].append(score)
        id2indices[idx].append(i)
    for idx, group in id2score.items():
        assert len(group) > 1
        rewards = torch.tensor(group, dtype=torch.float64)
        top, top_idx = torch.topk(rewards, k=2)
        advantages[id2indices[idx][int(top_idx[0])]] = float((top[0] - top[1]) / (torch.std(rewards) + eps))
    return advantages


def verl_low_var_kl(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    d = torch.clamp(ref - logp, min=-20, max=20)
    return torch.clamp(torch.exp(d) - d - 1, min=-10, max=10)


def release_low_var_kl(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The SophiaVL-R1 release: argument clamped, the result's clamp commented out."""
    d = torch.clamp(ref - logp, min=-10, max=10)
    return torch.exp(d) - d - 1


def verl_agg_seq_mean_token_sum_norm(
    loss: torch.Tensor, mask: torch.Tensor, scale_factor: float
) -> torch.Tensor:
    return torch.sum(torch.sum(loss * mask, dim=-1)) / scale_factor


# ----------------------------------------------------------------------------- CISPO and SAPO


def _random_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(old, logp [B, T] with grad, per-sequence advantages [B], mask [B, T] with an empty row), float64."""
    gen = torch.Generator().manual_seed(seed)
    old = -torch.rand(6, 5, generator=gen, dtype=torch.float64) * 3
    logp = (old + torch.randn(6, 5, generator=gen, dtype=torch.float64) * 0.6).requires_grad_(True)
    adv = torch.randn(6, generator=gen, dtype=torch.float64)
    adv[1] = 0.0
    lengths = torch.randint(1, 6, (6,), generator=gen)
    lengths[2] = 0
    mask = (torch.arange(5)[None, :] < lengths[:, None]).to(torch.float64)
    return old, logp, adv, mask


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(
    ("kind", "low", "high"), [("cispo", 0.2, 0.28), ("cispo", 0.0, 4.0), ("sapo", 0.2, 0.2)]
)
@pytest.mark.parametrize(("mode", "peer_mode"), [("token-mean", "token"), ("seq-mean-token-mean", "seq")])
def test_cispo_and_sapo_match_easyr1_in_value_and_gradient(
    seed: int, kind: str, low: float, high: float, mode: str, peer_mode: str
) -> None:
    """`low = 0` is EasyR1's CISPO example (its weight floor is then 1; the pure function agrees)."""
    old, logp, adv, mask = _random_batch(seed)
    clip = ClipConfig(low=low, high=high, tau_positive=1.0, tau_negative=1.05)
    terms, _ = policy_loss_terms(kind, logp, old, adv, mask, clip)
    ours = aggregate(terms, mask, mode, AggScale.local(mask))
    (ours_grad,) = torch.autograd.grad(ours, logp)
    peer = _easyr1_average(easyr1_cispo_sapo(old, logp, adv[:, None], low, high, kind), mask, peer_mode)
    (peer_grad,) = torch.autograd.grad(peer, logp)
    torch.testing.assert_close(ours, peer, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(ours_grad, peer_grad, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("seed", range(10))
def test_cispo_without_a_lower_bound_matches_verl(seed: int) -> None:
    """low >= 1 (the paper's "no lower bound", verl's example uses 10) is outside EasyR1's log-space clamp."""
    old, logp, adv, mask = _random_batch(seed)
    terms, _ = policy_loss_terms("cispo", logp, old, adv, mask, ClipConfig(low=10.0, high=0.2))
    (ours,) = torch.autograd.grad(aggregate(terms, mask, "token-mean", AggScale.local(mask)), logp)
    (peer,) = torch.autograd.grad(
        _peer_masked_mean(verl_cispo(old, logp, adv[:, None], 10.0, 0.2), mask), logp
    )
    torch.testing.assert_close(ours, peer, rtol=1e-6, atol=1e-12)


# ----------------------------------------------------------------------------- GRPO pass@k


@pytest.mark.parametrize("seed", range(50))
def test_grpo_passk_matches_easyr1_on_random_groups(seed: int) -> None:
    """Binary and graded rewards (ties at the top included), groups of 2 to 8 in shuffled order."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 9, size=int(rng.integers(1, 6)))
    index = rng.permutation(np.repeat(np.arange(len(sizes)), sizes))
    scores = (
        rng.integers(0, 2, len(index)).astype(np.float64) if seed % 2 else rng.random(len(index)).round(1)
    )
    batch = EstimatorInput(scores[:, None], np.ones((len(index), 1)), index)
    ours = compute_advantages("grpo_passk", batch)[:, 0]
    np.testing.assert_allclose(ours, easyr1_grpo_passk(scores.tolist(), index.tolist()), rtol=1e-12, atol=0)


def test_grpo_passk_groups_of_one_get_zero_where_easyr1_refuses_them() -> None:
    batch = EstimatorInput(np.array([[0.3], [1.0], [0.0]]), np.ones((3, 1)), np.array([0, 1, 1]))
    assert compute_advantages("grpo_passk", batch)[0, 0] == 0.0
    with pytest.raises(AssertionError):
        easyr1_grpo_passk([0.3, 1.0, 0.0], [0, 1, 1])


# ----------------------------------------------------------------------------- KL clamps


def _k3(fn, x: float) -> tuple[float, float]:
    """(value, d value / d logp) of a low_var_kl function at x = logp - ref_logp (ref_logp = 0)."""
    logp = torch.tensor([[x]], dtype=torch.float64, requires_grad=True)
    value = fn(logp, torch.zeros_like(logp))
    value.sum().backward()
    return value.item(), logp.grad.item()


def _ours(logp: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return kl_penalty(logp, ref, "low_var_kl")


# x = logp - ref_logp -> ((ours), (verl and EasyR1), (release)), each (value, gradient): docs/method.md's table
K3_BANDS = {
    -12.0: ((10.0, 0.0), (10.0, 0.0), (math.exp(10) - 11, 0.0)),
    -5.0: ((10.0, 0.0), (10.0, 0.0), (math.exp(5) - 6, 1 - math.exp(5))),
    -2.6: (
        (math.exp(2.6) - 3.6, 1 - math.exp(2.6)),
        (math.exp(2.6) - 3.6, 1 - math.exp(2.6)),
        (math.exp(2.6) - 3.6, 1 - math.exp(2.6)),
    ),
    -2.62: ((10.0, 0.0), (10.0, 0.0), (math.exp(2.62) - 3.62, 1 - math.exp(2.62))),
    0.5: ((math.exp(-0.5) - 0.5, 1 - math.exp(-0.5)),) * 3,
    10.0: ((math.exp(-10) + 9, 1 - math.exp(-10)),) * 3,
    10.5: ((math.exp(-10) + 9, 0.0), (math.exp(-10.5) + 9.5, 1 - math.exp(-10.5)), (math.exp(-10) + 9, 0.0)),
    11.5: ((math.exp(-10) + 9, 0.0), (10.0, 0.0), (math.exp(-10) + 9, 0.0)),
}


@pytest.mark.parametrize("x", sorted(K3_BANDS))
def test_low_var_kl_at_the_band_edges_is_as_documented_here_in_verl_and_in_the_release(x: float) -> None:
    ours, verl, release = K3_BANDS[x]
    for fn, (value, grad) in ((_ours, ours), (verl_low_var_kl, verl), (release_low_var_kl, release)):
        got_value, got_grad = _k3(fn, x)
        assert got_value == pytest.approx(value, rel=1e-9), (fn.__name__, x)
        assert got_grad == pytest.approx(grad, rel=1e-9, abs=1e-12), (fn.__name__, x)


def test_the_issues_example_point_ours_9_000045_with_no_gradient_verl_9_500028_with_gradient() -> None:
    assert _k3(_ours, 10.5) == pytest.approx((9.000045, 0.0), abs=1e-6)
    assert _k3(verl_low_var_kl, 10.5) == pytest.approx((9.500028, 0.999972), abs=1e-6)


# ----------------------------------------------------------------------------- aggregation scale


def test_seq_mean_token_sum_norm_is_verls_agg_loss_divided_by_the_sequences() -> None:
    """Ours: sum of token terms / (N sequences x L); verl's agg_loss: / L alone (docs/method.md)."""
    gen = torch.Generator().manual_seed(3)
    values = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    mask = torch.tensor(
        [[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0] * 6, [1, 0, 0, 0, 0, 0]], dtype=torch.float64
    )
    by_hand = float((values * mask).sum()) / (4 * 8)  # N = 4 sequences (the empty one too), L = 8
    ours = aggregate(values, mask, "seq-mean-token-sum-norm", AggScale.local(mask, max_length=8)).item()
    assert ours == pytest.approx(by_hand, rel=1e-12)
    assert ours * 4 == pytest.approx(verl_agg_seq_mean_token_sum_norm(values, mask, 8).item(), rel=1e-12)
