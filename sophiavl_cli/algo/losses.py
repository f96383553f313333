"""Policy losses (PPO clip, GSPO, CISPO, SAPO), loss aggregation, KL estimators, entropy and token log-probs.

Shapes: B sequences, T response tokens, V vocabulary. Policy losses give per-token terms; the
caller reduces them with `aggregate` and the mini-batch's `AggScale`, so the gradient of an
optimizer step does not depend on how its sequences are split into micro-batches or over ranks.
No torch.distributed here: the worker counts the totals (one all-reduce) and passes them in.

Numerics: the PPO/GSPO/SAPO log-ratio, the k3 KL argument and the k3 value are all clamped to
[-10, 10] so one token far off-policy cannot overflow `exp`. The SophiaVL release clamps the
log-ratio and the k3 argument there too but not the k3 value (its clamp line is commented out);
EasyR1 and verl clamp the log-ratio and the k3 argument to [-20, 20] and the k3 value to
[-10, 10]. docs/method.md tabulates where the three differ.
Log-probs and entropies are computed in float32 in row chunks, so a bf16 [B, T, V] logits tensor
is never copied whole into float32 (nor kept whole for backward: each chunk is recomputed there;
`logprobs_and_entropy`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch

LOG_RATIO_CLAMP = 10.0


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (0 when the mask is empty). Any shape."""
    keep = mask.to(torch.bool)  # same shape as x
    total = torch.where(keep, x, torch.zeros_like(x)).sum()  # [] masked-out inf/nan never leak in
    return total / keep.sum().clamp(min=1)  # []


class LossAgg(str, Enum):
    """`worker.actor.loss_agg_mode` values (verl's names and meanings)."""

    TOKEN_MEAN = "token-mean"  # sum over all tokens / number of tokens
    SEQ_MEAN_TOKEN_SUM = "seq-mean-token-sum"  # mean over sequences of each token sum
    SEQ_MEAN_TOKEN_MEAN = "seq-mean-token-mean"  # mean over sequences of each token mean
    SEQ_MEAN_TOKEN_SUM_NORM = "seq-mean-token-sum-norm"  # token sums / (sequences x max length): Dr. GRPO


@dataclass(frozen=True)
class AggScale:
    """The denominators of one optimizer step's loss, counted over the whole mini-batch.

    A mini-batch is split into micro-batches (gradient accumulation) and over ranks; each piece
    contributes `sum of its terms / these totals`, so the summed gradient is the mini-batch's
    whatever the split. `max_length` is Dr. GRPO's constant (data.max_response_length), not a
    padded width, for the same reason.
    """

    tokens: float  # response tokens in the mini-batch, all ranks
    sequences: float  # sequences in the mini-batch, all ranks
    max_length: float  # the constant normaliser of seq-mean-token-sum-norm

    @classmethod
    def local(cls, mask: torch.Tensor, max_length: float | None = None) -> AggScale:
        """The totals of one [B, T] mask on its own (a mini-batch of one micro-batch)."""
        return cls(
            tokens=float(mask.sum()),
            sequences=float(mask.shape[0]),
            max_length=float(mask.shape[-1] if max_length is None else max_length),
        )


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str | LossAgg, scale: AggScale) -> torch.Tensor:
    """This micro-batch's share of the mini-batch loss: masked terms [B, T] -> [].

    Summing the shares of every micro-batch on every rank gives the mode's mean over the
    mini-batch. An empty mask contributes 0; a row with no tokens counts as a sequence of loss 0.
    """
    keep = mask.to(torch.bool)
    terms = torch.where(keep, values, torch.zeros_like(values))  # [B, T]; masked-out inf/nan never leak in
    mode = LossAgg(mode)
    if mode is LossAgg.TOKEN_MEAN:
        return terms.sum() / max(scale.tokens, 1.0)
    if mode is LossAgg.SEQ_MEAN_TOKEN_MEAN:
        per_row = terms.sum(dim=-1) / keep.sum(dim=-1).clamp(min=1)  # [B]
        return per_row.sum() / max(scale.sequences, 1.0)
    if mode is LossAgg.SEQ_MEAN_TOKEN_SUM:
        return terms.sum() / max(scale.sequences, 1.0)
    return terms.sum() / (max(scale.sequences, 1.0) * scale.max_length)


class PolicyLossKind(str, Enum):
    """`worker.actor.policy_loss` values."""

    PPO_CLIP = "ppo_clip"
    GSPO = "gspo"
    CISPO = "cispo"
    SAPO = "sapo"


@dataclass(frozen=True)
class ClipConfig:
    """How the importance ratio is bounded: clipped to [1 - low, 1 + high] (PPO, GSPO, CISPO's
    weights), `dual` capping negative-advantage terms (PPO only), or SAPO's soft gate, whose
    temperatures take the clip's place."""

    low: float = 0.2
    high: float = 0.2
    dual: float | None = None  # dual-clip constant c > 1 (Ye et al. 2020); None: off
    tau_positive: float = 1.0  # SAPO gate temperature where A > 0 (EasyR1 and verl: 1.0)
    tau_negative: float = 1.05  # SAPO gate temperature where A <= 0 (EasyR1 and verl: 1.05)


PolicyLossFn = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, ClipConfig],
    tuple[torch.Tensor, dict[str, torch.Tensor]],
]
POLICY_LOSSES: dict[PolicyLossKind, PolicyLossFn] = {}
REQUIRED_AGG: dict[PolicyLossKind, LossAgg] = {PolicyLossKind.GSPO: LossAgg.SEQ_MEAN_TOKEN_MEAN}
"""Losses defined only under one aggregation (GSPO averages sequences, each over its tokens)."""


def register_policy_loss(name: PolicyLossKind) -> Callable[[PolicyLossFn], PolicyLossFn]:
    def decorator(fn: PolicyLossFn) -> PolicyLossFn:
        if name in POLICY_LOSSES:
            raise ValueError(f"policy loss {name.value!r} is registered twice")
        POLICY_LOSSES[name] = fn
        return fn

    return decorator


def policy_loss_terms(
    kind: str | PolicyLossKind,
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: ClipConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss terms [B, T] of the named policy loss, and per-token metric indicators [B, T].

    `advantages` is [B] (one per sequence) or [B, T]. Reduce both with `aggregate` / `masked_mean`.
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)  # [B, T]
    return POLICY_LOSSES[PolicyLossKind(kind)](logp, old_logp, advantages, mask, clip)


def _clipped_surrogate(
    ratio: torch.Tensor, advantages: torch.Tensor, clip: ClipConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """max(-A r, -A clip(r, 1 - low, 1 + high)), then for A < 0 at most -A c (dual clip)."""
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * ratio.clamp(1.0 - clip.low, 1.0 + clip.high)  # [B, T]
    terms = torch.maximum(unclipped, clipped)  # [B, T] pessimistic bound
    indicators = {"clip_fraction": (clipped > unclipped).to(ratio.dtype)}
    if clip.dual is not None:
        cap = -advantages * clip.dual  # [B, T]
        dual = (advantages < 0) & (terms > cap)
        terms = torch.where(dual, cap, terms)
        indicators["clip_fraction_dual"] = dual.to(ratio.dtype)
    return terms, indicators


@register_policy_loss(PolicyLossKind.PPO_CLIP)
def ppo_clip(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO clip with DAPO's asymmetric range and optional dual clip.

    r_t = exp(clamp(logp - old, -10, 10)); loss_t = max(-A r_t, -A clip(r_t, 1 - low, 1 + high)),
    and with dual clip c, min(loss_t, -A c) where A < 0.
    """
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    terms, indicators = _clipped_surrogate(ratio, advantages, clip)
    with torch.no_grad():
        indicators["approx_kl"] = ratio - 1.0 - log_ratio  # [B, T] k3 of KL(old || new), >= 0
    return terms, indicators


@register_policy_loss(PolicyLossKind.GSPO)
def gspo(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025): the importance ratio of a whole sequence, clipped per sequence.

    s_i = exp(mean_t (logp_it - old_it)); every token of row i carries
    s_it = sg[s_i] * pi(y_it) / sg[pi(y_it)] (value s_i; the paper's GSPO-token form, equal to
    GSPO when A is per sequence), and loss_it = max(-A_it s_it, -A_it clip(s_it, 1 - low, 1 + high)).
    Averaged with seq-mean-token-mean, the gradient is -A_i s_i mean_t grad logp_it for unclipped
    sequences: the paper's sequence-level objective.
    """
    keep = mask.to(torch.bool)
    diff = torch.where(keep, logp - old_logp, torch.zeros_like(logp))  # [B, T]
    seq_log_ratio = diff.sum(dim=-1) / keep.sum(dim=-1).clamp(min=1)  # [B] log s_i
    log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()  # [B, T] value log s_i
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))  # [B, T]
    terms, indicators = _clipped_surrogate(ratio, advantages, clip)
    with torch.no_grad():
        token_log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        indicators["approx_kl"] = torch.exp(token_log_ratio) - 1.0 - token_log_ratio
    return terms, indicators


@register_policy_loss(PolicyLossKind.CISPO)
def cispo(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """CISPO (MiniMax 2025, arXiv:2506.13585): REINFORCE with clipped, detached IS weights.

    w_t = sg[clip(r_t, 1 - low, 1 + high)], loss_t = -A w_t logp_t: the gradient is -A w_t grad logp_t
    for every token, so the clip bounds a token's weight but never drops its gradient (PPO's clip
    zeroes it). `low >= 1` leaves the weight without a lower bound, as in the paper. The weight is
    exp of the log-ratio clamped above at log(1 + high) (EasyR1's form, no overflow), then floored
    at 1 - low (verl's form, valid for low >= 1); the loss value is not a surrogate of the return,
    only its gradient is.
    """
    ceiling = math.log1p(clip.high)  # log(1 + high)
    with torch.no_grad():
        log_ratio = logp - old_logp  # [B, T]
        weight = torch.exp(log_ratio.clamp(max=ceiling)).clamp(min=1.0 - clip.low)  # [B, T]
        bounded = log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
        indicators = {
            "clip_fraction": ((log_ratio > ceiling) | (log_ratio.exp() < 1.0 - clip.low)).to(logp.dtype),
            "approx_kl": torch.exp(bounded) - 1.0 - bounded,  # [B, T] k3 of KL(old || new)
        }
    return -advantages * weight * logp, indicators


@register_policy_loss(PolicyLossKind.SAPO)
def sapo(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, clip: ClipConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """SAPO (Gao et al. 2025, arXiv:2511.20347): a smooth gate on the ratio instead of the hard clip.

    f(r) = 4 / tau * sigmoid(tau * (r - 1)), loss_t = -A f(r_t) with tau = tau_positive where A > 0
    and tau_negative otherwise. d f / d r = 4 sigmoid (1 - sigmoid) is 1 at r = 1 (the plain policy
    gradient on-policy) and decays smoothly off-policy, faster for the larger tau; `low`, `high`
    and `dual` play no part.
    """
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    tau = torch.where(
        advantages > 0, torch.full_like(ratio, clip.tau_positive), torch.full_like(ratio, clip.tau_negative)
    )  # [B, T]
    gate = torch.sigmoid(tau * (ratio - 1.0)) * (4.0 / tau)  # [B, T]
    with torch.no_grad():
        indicators = {"approx_kl": ratio - 1.0 - log_ratio}
    return -advantages * gate, indicators


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Symmetric PPO clip, token mean over this mask alone: the released recipe's loss.

    Args:
        logp: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logp: [B, T] the same under the policy that generated them.
        advantages: [B] one advantage per sequence, or [B, T] already per token.
        mask: [B, T] 1 on response tokens.
        clip_ratio: epsilon; the ratio is clipped to [1 - eps, 1 + eps].

    Returns:
        loss: [] to minimise.
        metrics (detached []): `pg_loss`; `clip_fraction`, the share of tokens whose clipped term
        was used (their gradient is zero); `approx_kl`, the k3 estimate of KL(old || new).
    """
    terms, indicators = policy_loss_terms(
        PolicyLossKind.PPO_CLIP, logp, old_logp, advantages, mask, ClipConfig(clip_ratio, clip_ratio)
    )
    loss = masked_mean(terms, mask)
    metrics = {key: masked_mean(value.detach(), mask) for key, value in indicators.items()}
    return loss, {"pg_loss": loss.detach(), **metrics}


KL_KINDS = ("low_var_kl", "kl", "abs", "mse", "k1", "k2", "k3")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    `low_var_kl` (alias `k3`) is exp(d) - d - 1 with d = ref_logp - logp clamped to [-10, 10]
    (the SophiaVL release; EasyR1 and verl now: [-20, 20]), the result clamped to [-10, 10];
    `kl` (`k1`) is logp - ref_logp; `abs` is |k1|; `mse` (`k2`) is 0.5 * k1^2, all unclamped.
    Inputs and output: [B, T]; reduce with `aggregate` or `masked_mean`.
    """
    if kind in ("low_var_kl", "k3"):
        d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
        return (torch.exp(d) - d - 1.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    diff = logp - ref_logp  # [B, T]
    if kind in ("kl", "k1"):
        return diff  # [B, T]
    if kind == "abs":
        return diff.abs()  # [B, T]
    if kind in ("mse", "k2"):
        return 0.5 * diff.square()  # [B, T]
    raise ValueError(f"unknown KL estimator {kind!r}; use one of {', '.join(KL_KINDS)}")


def _row_chunks(rows: int, chunk_rows: int | None) -> list[slice]:
    step = chunk_rows if chunk_rows and chunk_rows > 0 else max(rows, 1)
    return [slice(start, start + step) for start in range(0, rows, step)]


class _ChunkedLogprobsEntropy(torch.autograd.Function):
    """Sampled-token log-probs and entropies of softmax(logits / T), one row chunk in float32 at a time.

    Autograd through a chunked loop would keep every chunk's float32 intermediates for backward and
    build a full-size zero gradient per slice; here backward recomputes each chunk's softmax and
    writes its gradient straight into one buffer in the logits' dtype. Extra memory: that buffer
    (the gradient itself) plus a few [chunk_rows, V] float32 tensors.
    """

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, temperature: float, chunk_rows: int | None
    ):  # type: ignore[override]
        logp = logits.new_empty(logits.shape[0], dtype=torch.float32)  # [N]
        entropy = torch.empty_like(logp)  # [N]
        lse = torch.empty_like(logp)  # [N]
        for rows in _row_chunks(logits.shape[0], chunk_rows):
            z = logits[rows].to(torch.float32, copy=True).div_(temperature)  # [n, V]
            lse[rows] = torch.logsumexp(z, dim=-1)
            logp[rows] = z.gather(-1, labels[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
            entropy[rows] = lse[rows] - torch.softmax(z, dim=-1).mul_(z).sum(dim=-1)
        ctx.save_for_backward(logits, labels, lse, entropy)
        ctx.temperature, ctx.chunk_rows = temperature, chunk_rows
        return logp, entropy

    @staticmethod
    def backward(ctx: Any, grad_logp: torch.Tensor | None, grad_entropy: torch.Tensor | None):  # type: ignore[override]
        logits, labels, lse, entropy = ctx.saved_tensors
        grad = torch.empty_like(logits)  # [N, V]
        for rows in _row_chunks(logits.shape[0], ctx.chunk_rows):  # in place: ~2 chunks of float32 live
            dz = (
                logits[rows].to(torch.float32, copy=True).div_(ctx.temperature).sub_(lse[rows, None])
            )  # [n, V]: log p
            p = dz.exp()  # [n, V]
            if grad_entropy is not None:  # dH/dz_j = -p_j (log p_j + H)
                dz.add_(entropy[rows, None]).mul_(p).mul_(-grad_entropy[rows, None])
            else:
                dz.zero_()
            if grad_logp is not None:  # d log p_y / dz_j = 1[j = y] - p_j
                g = grad_logp[rows, None]
                dz.sub_(p.mul_(g)).scatter_add_(-1, labels[rows].unsqueeze(-1), g)
            grad[rows] = dz.div_(ctx.temperature)
        return grad, None, None, None


def logprobs_and_entropy(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_rows: int | None = 1024
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log softmax(z)[labels], entropy of softmax(z)) with z = logits / temperature, in float32.

    Shapes [..., V], [...] -> ([...], [...]). `logits[..., t, :]` must already be the prediction
    for `labels[..., t]` (shifted by the caller). The temperature matches the sampler's, so old
    log-probs equal the rollout's. Only `chunk_rows` positions are ever upcast, in forward and
    backward: a bf16 [B, T, V] tensor is never copied whole into float32.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
    logp, entropy = _ChunkedLogprobsEntropy.apply(flat, labels.reshape(-1), temperature, chunk_rows)
    return logp.reshape(labels.shape), entropy.reshape(labels.shape)


def entropy_from_logits(
    logits: torch.Tensor, chunk_rows: int | None = 1024, temperature: float = 1.0
) -> torch.Tensor:
    """Entropy of softmax(logits / temperature) over the last dim, in float32: [..., V] -> [...]."""
    labels = torch.zeros(logits.shape[:-1], dtype=torch.long, device=logits.device)
    return logprobs_and_entropy(logits, labels, temperature, chunk_rows)[1]


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_rows: int | None = 1024
) -> torch.Tensor:
    """log softmax(logits / temperature) at `labels`, in float32: [..., V], [...] -> [...]."""
    return logprobs_and_entropy(logits, labels, temperature, chunk_rows)[0]
