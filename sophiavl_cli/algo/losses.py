"""Policy-gradient loss, KL-to-reference estimators, entropy and token log-probs on tensors.

Shapes: B sequences, T response tokens, V vocabulary. Every loss is a token mean over the
micro-batch (masked), as in the released recipe; the caller averages micro-batches over gradient
accumulation. No torch.distributed here: workers call these on local tensors.

Numerics: the PPO log-ratio, the k3 KL argument and the k3 value are all clamped to [-10, 10] so
one token far off-policy cannot overflow `exp`. EasyR1 (verl/trainer/core_algos.py) clamps the
log-ratio and the k3 argument to [-20, 20] and only the k3 value to [-10, 10]; ours is tighter.
Log-probs and entropies are computed in float32 in row chunks, so a bf16 [B, T, V] logits tensor
is never copied whole into float32 (nor kept whole for backward: each chunk is recomputed there;
`logprobs_and_entropy`).
"""

from __future__ import annotations

from typing import Any

import torch

LOG_RATIO_CLAMP = 10.0
KL_KINDS = ("low_var_kl", "kl", "abs", "mse")


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `x` over positions where `mask` is 1 (0 when the mask is empty). Any shape."""
    keep = mask.to(torch.bool)  # same shape as x
    total = torch.where(keep, x, torch.zeros_like(x)).sum()  # [] masked-out inf/nan never leak in
    return total / keep.sum().clamp(min=1)  # []


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_ratio: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate, token mean over the mask.

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
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1)  # [B, 1] broadcast over tokens
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    ratio = torch.exp(log_ratio)  # [B, T]
    unclipped = -advantages * ratio  # [B, T]
    clipped = -advantages * ratio.clamp(1.0 - clip_ratio, 1.0 + clip_ratio)  # [B, T]
    per_token = torch.maximum(unclipped, clipped)  # [B, T] pessimistic bound
    loss = masked_mean(per_token, mask)  # []
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(per_token.dtype), mask)  # []
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask)  # [] k3, >= 0
    return loss, {"pg_loss": loss.detach(), "clip_fraction": clip_fraction, "approx_kl": approx_kl}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from sampled tokens' log-probs.

    `low_var_kl` is k3 = exp(d) - d - 1 with d = ref_logp - logp clamped to [-10, 10] (EasyR1:
    [-20, 20]), the result clamped to [-10, 10] (as EasyR1); `kl` is k1 = logp - ref_logp; `abs` is |k1|; `mse` is k2 =
    0.5 * k1^2. Inputs and output: [B, T]; reduce with `masked_mean`.
    """
    if kind == "low_var_kl":
        d = (ref_logp - logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
        return (torch.exp(d) - d - 1.0).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)  # [B, T]
    diff = logp - ref_logp  # [B, T]
    if kind == "kl":
        return diff  # [B, T]
    if kind == "abs":
        return diff.abs()  # [B, T]
    if kind == "mse":
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
