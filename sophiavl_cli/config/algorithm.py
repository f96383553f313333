"""The `algorithm` section: advantage estimator, policy loss, KL, Trust-GRPO and DAPO's dynamic sampling.

These keys change with `algo/`: a new estimator or loss adds its switch and bounds here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from sophiavl_cli.config.fields import Section

GROUP_ESTIMATORS = frozenset({"grpo", "dr_grpo", "rloo", "reinforce_plus_plus_baseline", "grpo_passk"})
"""Estimators whose advantage compares a rollout with the other rollouts of its prompt: with
`worker.rollout.n = 1` every advantage is 0 and nothing trains, so the recipe refuses that. The one
place this set is written; a new group estimator joins it."""


class TrustConfig(Section):
    enable: bool = Field(
        True,
        description="Add the trust-weighted thinking reward; false trains with outcome rewards only (GRPO).",
    )
    mode: Literal["paper", "release"] = Field(
        "paper",
        description="paper: RM scores every rollout; release: the released code's gating (see docs/method.md).",
    )
    alpha: float = Field(0.3, ge=0, description="Initial weight of the thinking reward.")
    horizon: float | Literal["total_steps"] = Field(
        "total_steps",
        description="Annealing horizon T in w_t = alpha*exp(-t/T); total_steps as in the paper, 12000 in the release.",
    )
    enable_annealing: bool = Field(
        True, description="false keeps the weight at alpha (the paper's ablation)."
    )
    enable_trust: bool = Field(True, description="false fixes gamma = 1 (the paper's no-trust ablation).")

    @field_validator("horizon")
    @classmethod
    def _positive_horizon(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError("must be > 0 or 'total_steps'")
        return value


class DynamicSamplingConfig(Section):
    enable: bool = Field(
        False,
        description="DAPO dynamic sampling: drop groups whose final rewards are all equal and sample more "
        "prompts until the batch is full.",
    )
    max_extra_rounds: int = Field(
        4,
        ge=0,
        description="Extra generation rounds per step at most; when still short, the batch is topped up "
        "with dropped groups (counted in sampling/topped_up_groups).",
    )


class AlgorithmConfig(Section):
    adv_estimator: Literal[
        "grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline", "grpo_passk"
    ] = Field(
        "grpo",
        description="Advantage estimator (docs/method.md): grpo (group-normalised), dr_grpo (no std "
        "division), rloo (leave-one-out), reinforce_plus_plus(_baseline) (batch-whitened), grpo_passk "
        "(only each group's best rollout, by its lead over the runner-up: pass@k).",
    )
    gamma: float = Field(
        1.0, ge=0, le=1, description="Discount of the REINFORCE++ returns (other estimators ignore it)."
    )
    use_kl_loss: bool = Field(
        True, description="Add a KL-to-reference loss term (needs the reference model)."
    )
    kl_in_reward: bool = Field(
        False,
        description="Subtract kl_coef x per-token KL(old policy || reference) from the reward instead "
        "(verl's use_kl_in_reward); needs use_kl_loss false.",
    )
    kl_penalty: Literal["low_var_kl", "kl", "abs", "mse", "k1", "k2", "k3"] = Field(
        "low_var_kl",
        description="KL estimator: low_var_kl = k3, kl = k1, mse = k2 (clamps in docs/method.md).",
    )
    kl_coef: float = Field(0.04, ge=0, description="Weight of the KL term; 0 skips the reference model.")
    dynamic_sampling: DynamicSamplingConfig = Field(
        default_factory=DynamicSamplingConfig, description="DAPO dynamic sampling."
    )
    trust: TrustConfig = Field(
        default_factory=TrustConfig, description="Trust-GRPO thinking-reward weighting."
    )

    @model_validator(mode="after")
    def _one_kl_placement(self) -> AlgorithmConfig:
        if self.kl_in_reward and self.use_kl_loss:
            raise ValueError(
                "algorithm.kl_in_reward and algorithm.use_kl_loss are both true; the KL goes either into the "
                "reward or into the loss: set algorithm.use_kl_loss=false"
            )
        return self
