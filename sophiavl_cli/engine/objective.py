"""The actor's loss on one micro-batch: PPO-clip + KL to the reference - entropy bonus.

    loss = pg_loss + kl_coef * KL(policy || ref) - entropy_coef * entropy

Each term is a token mean over the micro-batch's response tokens (the released recipe's
`token-mean`); the worker divides by the number of micro-batches of the optimizer step, so the
gradient is their average. Log-probs and entropy use logits / temperature, the distribution the
rollout sampled from. The formulas live in `algo.losses`; this module only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sophiavl_cli.algo.losses import kl_penalty, logprobs_and_entropy, masked_mean, policy_loss
from sophiavl_cli.config.recipe import Recipe


@dataclass(frozen=True)
class ObjectiveConfig:
    clip_ratio: float
    entropy_coef: float
    kl_coef: float
    kl_kind: str
    use_kl: bool
    temperature: float

    @classmethod
    def from_recipe(cls, recipe: Recipe, *, use_kl: bool) -> ObjectiveConfig:
        actor, algo = recipe.worker.actor, recipe.algorithm
        temperature = recipe.worker.rollout.temperature
        return cls(
            clip_ratio=actor.clip_ratio,
            entropy_coef=actor.entropy_coef,
            kl_coef=algo.kl_coef,
            kl_kind=algo.kl_penalty,
            use_kl=use_kl,
            temperature=temperature if temperature > 0 else 1.0,
        )


def uses_reference(recipe: Recipe) -> bool:
    """The reference model is loaded only when its KL term can change the loss."""
    return recipe.algorithm.use_kl_loss and recipe.algorithm.kl_coef > 0


def actor_objective(
    cfg: ObjectiveConfig,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss [], metrics) for logits [B, R, V], tokens/mask/old/ref [B, R], advantages [B]."""
    logp, token_entropy = logprobs_and_entropy(logits, tokens, cfg.temperature)  # [B, R] each, one pass
    pg, pg_metrics = policy_loss(logp, old_logp, advantages, mask, cfg.clip_ratio)
    entropy = masked_mean(token_entropy, mask)  # []
    loss = pg - cfg.entropy_coef * entropy
    metrics = {key: float(value) for key, value in pg_metrics.items()}
    metrics["entropy"] = float(entropy.detach())
    if cfg.use_kl and ref_logp is not None:
        kl = masked_mean(kl_penalty(logp, ref_logp, cfg.kl_kind), mask)  # []
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = float(kl.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
