"""The `worker` section: the actor (optimizer, FSDP2, LoRA, micro-batches), the rollout engine and the reference.

These keys change with `engine/workers/` and `engine/rollout/`; `train-rm` reuses the optimizer and FSDP
sections (config/rm_recipe.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sophiavl_cli.config.fields import Section


class OptimConfig(Section):
    lr: float = Field(6e-7, gt=0, description="AdamW learning rate (paper 5e-7, release 6e-7).")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay.")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field(
        "constant", description="LR schedule after warm-up."
    )
    lr_warmup_ratio: float = Field(
        0.0, ge=0, le=1, description="Fraction of steps spent warming the LR up linearly."
    )


class FSDPConfig(Section):
    full_shard: bool = Field(
        True,
        description="Reshard each block's parameters after its forward (least memory). false: keep them "
        "gathered through an optimizer step's micro-batches (ZeRO-2; gradients and optimizer state stay "
        "sharded): one all-gather per block per step, same numbers, the full model's parameters per rank.",
    )
    offload_params: bool = Field(False, description="Move parameters to CPU between phases (GPU only).")
    offload_optimizer: bool = Field(
        False, description="Move optimizer state to CPU between phases (GPU only)."
    )


class LoraConfig(Section):
    rank: int = Field(0, ge=0, description="LoRA rank r; 0 trains every weight (full fine-tuning).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA branch's input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names (last part) of the language model's linear layers to adapt; the vision tower "
        "is never adapted and is frozen.",
    )


class ActorConfig(Section):
    model_path: str = Field(
        "builtin:tiny-qwen2.5-vl",
        description="Policy: a local folder, hub id in the cache, alias or builtin:* model.",
    )
    global_batch_size: int = Field(
        16, gt=0, description="Prompts per optimizer step (x rollout.n sequences)."
    )
    micro_batch_size_per_device_for_update: int = Field(
        4, gt=0, description="Sequences per forward/backward in the update."
    )
    micro_batch_size_per_device_for_experience: int = Field(
        4, gt=0, description="Sequences per forward in log-prob passes."
    )
    max_tokens_per_micro_batch: int | None = Field(
        None,
        gt=0,
        description="Token budget (padding included) per micro-batch in the update and log-prob passes; "
        "replaces the micro_batch_size_* row counts. Unset: fixed row counts.",
    )
    ppo_epochs: int = Field(1, gt=0, description="Passes over each rollout batch.")
    policy_loss: Literal["ppo_clip", "gspo", "cispo", "sapo"] = Field(
        "ppo_clip",
        description="ppo_clip: token-level clipped ratio; gspo: sequence-level ratio exp(mean token "
        "log-ratio), clipped per sequence (needs loss_agg_mode seq-mean-token-mean); cispo: REINFORCE "
        "with clipped, detached ratio weights (no token loses its gradient); sapo: a smooth gate "
        "4/tau sigmoid(tau (ratio - 1)) instead of the clip (docs/method.md).",
    )
    loss_agg_mode: Literal[
        "token-mean", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = Field(
        "token-mean",
        description="How per-token losses become the optimizer step's loss, over the whole mini-batch "
        "(all micro-batches and ranks); seq-mean-token-sum-norm divides by data.max_response_length (Dr. GRPO).",
    )
    clip_ratio: float = Field(0.2, gt=0, description="PPO clip epsilon (both sides unless overridden below).")
    clip_ratio_low: float | None = Field(
        None,
        gt=0,
        description="Lower clip epsilon: ratio >= 1 - this; null uses clip_ratio. Below 1, except "
        "with cispo, where 1 or more leaves the weight without a lower bound.",
    )
    clip_ratio_high: float | None = Field(
        None,
        gt=0,
        description="Upper clip epsilon: ratio <= 1 + this (DAPO clip-higher 0.28); null uses clip_ratio.",
    )
    clip_ratio_dual: float | None = Field(
        None,
        gt=1,
        description="Dual clip c: a negative-advantage token's loss is at most -A x c (Ye et al. 2020); null: off. "
        "ppo_clip only.",
    )
    tau_positive: float = Field(
        1.0, gt=0, description="SAPO gate temperature for tokens with positive advantage (policy_loss sapo)."
    )
    tau_negative: float = Field(
        1.05,
        gt=0,
        description="SAPO gate temperature for the others; larger than tau_positive damps off-policy "
        "negative updates sooner (policy_loss sapo).",
    )
    entropy_coef: float = Field(1e-3, ge=0, description="Entropy bonus weight (subtracted from the loss).")
    max_grad_norm: float = Field(4.0, gt=0, description="Gradient-norm clip.")
    padding_free: bool = Field(
        True,
        description="Pack sequences without padding in training forwards (GPU with flash-attn installed).",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward to save memory."
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Training dtype: auto is bf16 on GPU, fp32 on CPU."
    )
    master_dtype: Literal["fp32", "bf16"] = Field(
        "fp32",
        description="Dtype of the trained weights, their gradients and AdamW's state: fp32 (mixed precision) "
        "or bf16 (pure bf16, also on CPU: 10 bytes a parameter instead of 16, Kahan-compensated updates; "
        "docs/plan.md).",
    )
    freeze_vision_tower: bool = Field(
        False, description="Keep the vision encoder's weights fixed (always so with LoRA)."
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig,
        description="LoRA adapters (peft) instead of full fine-tuning; weight sync and merge give merged weights.",
    )
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimizer and schedule.")
    fsdp: FSDPConfig = Field(default_factory=FSDPConfig, description="FSDP2 sharding and offload.")

    @model_validator(mode="after")
    def _pure_bf16_computes_in_bf16(self) -> ActorConfig:
        if self.master_dtype == "bf16" and self.dtype == "fp32":
            raise ValueError(
                "worker.actor.master_dtype=bf16 trains bf16 weights, which compute in bf16; "
                "set worker.actor.dtype=bf16 (or auto), or worker.actor.master_dtype=fp32"
            )
        return self

    @model_validator(mode="after")
    def _policy_loss_fits(self) -> ActorConfig:
        if self.policy_loss == "gspo" and self.loss_agg_mode != "seq-mean-token-mean":
            raise ValueError(
                f"worker.actor.policy_loss=gspo is defined with loss_agg_mode seq-mean-token-mean (got "
                f"{self.loss_agg_mode}); set worker.actor.loss_agg_mode=seq-mean-token-mean"
            )
        if self.clip_ratio_dual is not None and self.policy_loss != "ppo_clip":
            raise ValueError(
                f"worker.actor.clip_ratio_dual is a ppo_clip option; {self.policy_loss} has no dual clip "
                "(docs/method.md): remove clip_ratio_dual or set worker.actor.policy_loss=ppo_clip"
            )
        low = self.clip_ratio_low
        if low is not None and low >= 1 and self.policy_loss in ("ppo_clip", "gspo"):
            raise ValueError(
                f"worker.actor.clip_ratio_low must be below 1 with policy_loss={self.policy_loss} (got {low}: "
                "the ratio's floor 1 - clip_ratio_low would be <= 0); only cispo takes >= 1 (no lower bound)"
            )
        return self

    @property
    def clip_low(self) -> float:
        return self.clip_ratio if self.clip_ratio_low is None else self.clip_ratio_low

    @property
    def clip_high(self) -> float:
        return self.clip_ratio if self.clip_ratio_high is None else self.clip_ratio_high


class RolloutConfig(Section):
    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers generate (CPU/dev); vllm: colocated vLLM."
    )
    n: int = Field(8, gt=0, description="Rollouts per prompt (the group size G).")
    temperature: float = Field(1.0, ge=0, description="Sampling temperature.")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling.")
    top_k: int = Field(-1, description="Top-k sampling; -1 disables.")
    tensor_parallel_size: int = Field(1, gt=0, description="vLLM tensor-parallel size.")
    gpu_memory_utilization: float = Field(0.4, gt=0, le=1, description="vLLM share of GPU memory.")
    max_num_batched_tokens: int = Field(12000, gt=0, description="vLLM scheduler token budget.")
    enforce_eager: bool = Field(False, description="Disable CUDA graphs in vLLM.")
    enable_prefix_caching: bool = Field(True, description="vLLM prefix caching.")
    enable_sleep_mode: bool = Field(
        True, description="Free vLLM's KV cache and weights during the update (GPU)."
    )
    kv_cache_memory_bytes: int | None = Field(
        None,
        gt=0,
        description="vLLM KV-cache size in bytes; replaces gpu_memory_utilization. Unset on CPU: 128 MiB.",
    )
    limit_images: int = Field(1, ge=0, description="Max images per prompt given to the rollout engine.")
    val_temperature: float = Field(
        0.0, ge=0, description="Temperature for validation generations (0 = greedy)."
    )
    use_rollout_logprobs: bool = Field(
        False,
        description="Use the rollout engine's sampled-token log-probs as old log-probs (skips the old "
        "pass). Needs top_p 1 and top_k -1.",
    )
    weight_sync_bucket_mb: int = Field(
        512,
        gt=0,
        description="Weight sync after each update gathers the sharded policy in buckets of this many "
        "MiB, one collective per bucket (peak extra memory ~ one bucket or the largest tensor).",
    )

    @model_validator(mode="after")
    def _rollout_logprobs_are_the_full_distribution(self) -> RolloutConfig:
        """With top-p/top-k the engine's log-probs are of the truncated distribution, not the policy's."""
        if self.use_rollout_logprobs and (self.top_p < 1 or self.top_k not in (-1, 0)):
            raise ValueError(
                f"worker.rollout.use_rollout_logprobs needs worker.rollout.top_p=1 and worker.rollout.top_k=-1 "
                f"(got top_p={self.top_p}, top_k={self.top_k}): the engine's log-probs would be of the "
                "truncated distribution, not the policy's"
            )
        return self


class RefConfig(Section):
    offload: bool = Field(True, description="Keep the frozen reference model on CPU between passes (GPU).")


class WorkerConfig(Section):
    actor: ActorConfig = Field(default_factory=ActorConfig, description="Policy model and update.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout generation.")
    ref: RefConfig = Field(default_factory=RefConfig, description="Frozen reference model.")
