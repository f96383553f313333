"""Policy-gradient loss, KL-to-reference estimators, entropy and token log-probs on tensors.

Shapes: B sequences, T response tokens, V vocabulary. Every loss is a token mean over the
micro-batch (masked), as in the released recipe; the caller averages micro-batches over gradient
accumulation. No torch.distributed here: workers call these on local tensors.

Numerics: the PPO log-ratio, the k3 KL argument and the k3 value are all clamped to [-10, 10] so
one token far off-policy cannot overflow `exp`. EasyR1 (verl/trainer/core_algos.py) clamps the
log-ratio and the k3 argument to [-20, 20] and only the k3 value to [-10, 10]; ours is tighter.
Log-probs and entropies are computed in float32 in row chunks, so a bf16 [B, T, V] logits tensor
is never copied whole into float32.
"""

from __future__ import annotations

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


def entropy_from_logits(logits: torch.Tensor, chunk_rows: int | None = 1024) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim, in float32: [..., V] -> [...].

    H = logsumexp(z) - sum(softmax(z) * z), stable for large logits; computed `chunk_rows`
    positions at a time so only one chunk is ever upcast (differentiable).
    """
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
    parts = []
    for rows in _row_chunks(flat.shape[0], chunk_rows):
        z = flat[rows].float()  # [n, V]
        probs = torch.softmax(z, dim=-1)  # [n, V]
        parts.append(torch.logsumexp(z, dim=-1) - (probs * z).sum(dim=-1))  # [n]
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)  # [N]
    return out.reshape(logits.shape[:-1])  # [...]


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_rows: int | None = 1024
) -> torch.Tensor:
    """log softmax(logits / temperature) at `labels`, in float32: [..., V], [...] -> [...].

    `logits[..., t, :]` must already be the prediction for `labels[..., t]` (shifted by the
    caller). The temperature matches the sampler's, so old log-probs equal the rollout's.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0 to score tokens, got {temperature}")
    flat = logits.reshape(-1, logits.shape[-1])  # [N, V]
    flat_labels = labels.reshape(-1)  # [N]
    parts = []
    for rows in _row_chunks(flat.shape[0], chunk_rows):
        z = flat[rows].float() / temperature  # [n, V]
        picked = z.gather(-1, flat_labels[rows].unsqueeze(-1)).squeeze(-1)  # [n]
        parts.append(picked - torch.logsumexp(z, dim=-1))  # [n]
    out = torch.cat(parts) if parts else flat.new_zeros(0, dtype=torch.float32)  # [N]
    return out.reshape(labels.shape)  # [...]
