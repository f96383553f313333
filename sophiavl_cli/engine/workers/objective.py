"""The actor's loss on one micro-batch: policy loss + KL to the reference - entropy bonus.

    loss = pg_loss + kl_coef * KL(policy || ref) - entropy_coef * entropy

Each term is aggregated with `worker.actor.loss_agg_mode` over the whole mini-batch: a
micro-batch returns its share (`algo.losses.aggregate` with the mini-batch's `AggScale`), the
worker sums the shares by backpropagating each, so the gradient does not depend on the
micro-batch split or the number of ranks. Log-probs and entropy use logits / temperature, the
distribution the rollout sampled from. The formulas live in `algo.losses`; this module only wires them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sophiavl_cli.algo.losses import (
    AggScale,
    ClipConfig,
    LossAgg,
    aggregate,
    kl_penalty,
    logprobs_and_entropy,
    policy_loss_terms,
)
from sophiavl_cli.config.recipe import Recipe


@dataclass(frozen=True)
class ObjectiveConfig:
    clip: ClipConfig
    entropy_coef: float
    kl_coef: float
    kl_kind: str
    use_kl: bool
    temperature: float
    policy_loss: str = "ppo_clip"
    loss_agg_mode: str = "token-mean"
    max_response_length: int = 1

    @property
    def clip_ratio(self) -> float:
        """The symmetric epsilon (the lower side when they differ)."""
        return self.clip.low

    @classmethod
    def from_recipe(cls, recipe: Recipe, *, use_kl: bool) -> ObjectiveConfig:
        actor, algo = recipe.worker.actor, recipe.algorithm
        temperature = recipe.worker.rollout.temperature
        return cls(
            clip=ClipConfig(
                low=actor.clip_low,
                high=actor.clip_high,
                dual=actor.clip_ratio_dual,
                tau_positive=actor.tau_positive,
                tau_negative=actor.tau_negative,
            ),
            entropy_coef=actor.entropy_coef,
            kl_coef=algo.kl_coef,
            kl_kind=algo.kl_penalty,
            use_kl=use_kl and algo.use_kl_loss,
            temperature=temperature if temperature > 0 else 1.0,
            policy_loss=actor.policy_loss,
            loss_agg_mode=actor.loss_agg_mode,
            max_response_length=recipe.data.max_response_length,
        )


def uses_reference(recipe: Recipe) -> bool:
    """The reference model is loaded only when its KL term (in the loss or the reward) can matter."""
    return recipe.uses_reference


def actor_objective(
    cfg: ObjectiveConfig,
    logits: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    old_logp: torch.Tensor | None,
    ref_logp: torch.Tensor | None,
    advantages: torch.Tensor,
    scale: AggScale | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """(loss share [], metric shares) for logits [B, R, V], tokens/mask/old/ref [B, R], advantages [B] or [B, R].

    `scale` holds the mini-batch's totals; None treats this micro-batch as the whole mini-batch.
    Metrics are shares too: summed over the mini-batch's micro-batches they are its values.
    `old_logp` None means on-policy (one optimizer step per batch): these logits come from the
    policy that scored the batch, so the old log-probs are this pass's own, detached (ratio 1).
    """
    scale = scale or AggScale.local(mask, cfg.max_response_length)
    mode = LossAgg(cfg.loss_agg_mode)
    logp, token_entropy = logprobs_and_entropy(logits, tokens, cfg.temperature)  # [B, R] each, one pass
    if old_logp is None:
        old_logp = logp.detach()
    terms, indicators = policy_loss_terms(cfg.policy_loss, logp, old_logp, advantages, mask, cfg.clip)
    pg = aggregate(terms, mask, mode, scale)  # []
    entropy = aggregate(token_entropy, mask, mode, scale)  # []
    loss = pg - cfg.entropy_coef * entropy
    metrics = {"pg_loss": float(pg.detach()), "entropy": float(entropy.detach())}
    for key, value in indicators.items():  # token shares whatever the loss mode
        metrics[key] = float(aggregate(value.detach(), mask, LossAgg.TOKEN_MEAN, scale))
    if cfg.use_kl and ref_logp is not None:
        kl = aggregate(kl_penalty(logp, ref_logp, cfg.kl_kind), mask, mode, scale)  # []
        loss = loss + cfg.kl_coef * kl
        metrics["kl"] = float(kl.detach())
    metrics["loss"] = float(loss.detach())
    return loss, metrics
