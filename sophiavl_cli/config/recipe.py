"""The training recipe: one frozen pydantic tree, sectioned like the released SophiaVL/EasyR1 config.

Sections mirror the objects they build (`data`, `algorithm`, `worker.actor|rollout|ref`, `reward`,
`trainer`). Every field carries a description: it feeds `sophiavl recipe schema`, the editor
autocomplete and `docs/recipes.md`. Unknown keys are rejected (`extra="forbid"`); the loader turns
that into a did-you-mean message. Secrets are never fields: the API key is read from the environment
variable named in `reward.thinking.api_key_env` when a client is built.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sophiavl_cli.config.fields import EnvVarName, Name


class Section(BaseModel):
    """Base of every recipe section: frozen, strict about unknown keys."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# --------------------------------------------------------------------------- data


class DataConfig(Section):
    train_files: str = Field(
        "builtin:demo@train",
        description="Comma-separated registry names (optionally name@split), files, folders, hub ids or builtin:demo.",
    )
    val_files: str | None = Field(
        "builtin:demo@val", description="Like train_files, for in-training validation; null disables it."
    )
    registry: str | None = Field(
        None,
        description="dataset_info.json to resolve names from; default $SOPHIAVL_DATASET_REGISTRY or ./dataset_info.json.",
    )
    answer_key: str = Field("answer", description="Internal column holding the ground truth.")
    image_key: str = Field("images", description="Internal column holding image path(s) or HF image dicts.")
    max_prompt_length: int = Field(
        8192, gt=0, description="Prompt tokens (image tokens included); longer rows are dropped."
    )
    max_response_length: int = Field(1024, gt=0, description="Tokens generated per rollout.")
    rollout_batch_size: int = Field(
        16, gt=0, description="Prompts per training step (each gets worker.rollout.n rollouts)."
    )
    val_batch_size: int = Field(64, gt=0, description="Prompts per validation generation batch.")
    shuffle: bool = Field(True, description="Shuffle training data each epoch (seeded by data.seed).")
    seed: int = Field(1, description="Seed of the data order.")
    min_pixels: int = Field(262144, gt=0, description="Images smaller than this (w*h) are upscaled to it.")
    max_pixels: int = Field(4194304, gt=0, description="Images larger than this (w*h) are downscaled to it.")
    prompt_preset: Literal["sophiavl-r1", "none"] = Field(
        "sophiavl-r1", description="Prompt strings: the released models' exact prompts, or the raw question."
    )
    prompt_template: str | None = Field(
        None,
        description="A Jinja template (file path or inline text) that replaces the preset's user prompt.",
    )

    @model_validator(mode="after")
    def _pixels_ordered(self) -> DataConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("data.min_pixels must not exceed data.max_pixels")
        return self


# --------------------------------------------------------------------------- algorithm


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
        "grpo", "dr_grpo", "rloo", "reinforce_plus_plus", "reinforce_plus_plus_baseline"
    ] = Field(
        "grpo",
        description="Advantage estimator (docs/method.md): grpo (group-normalised), dr_grpo (no std "
        "division), rloo (leave-one-out), reinforce_plus_plus(_baseline) (batch-whitened).",
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


# --------------------------------------------------------------------------- worker


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
        True, description="Shard parameters, gradients and optimizer state (FSDP2 fully_shard)."
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
    policy_loss: Literal["ppo_clip", "gspo"] = Field(
        "ppo_clip",
        description="ppo_clip: token-level clipped ratio; gspo: sequence-level ratio exp(mean token "
        "log-ratio), clipped per sequence (needs loss_agg_mode seq-mean-token-mean).",
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
        None, gt=0, lt=1, description="Lower clip epsilon: ratio >= 1 - this; null uses clip_ratio."
    )
    clip_ratio_high: float | None = Field(
        None,
        gt=0,
        description="Upper clip epsilon: ratio <= 1 + this (DAPO clip-higher 0.28); null uses clip_ratio.",
    )
    clip_ratio_dual: float | None = Field(
        None,
        gt=1,
        description="Dual clip c: a negative-advantage token's loss is at most -A x c (Ye et al. 2020); null: off.",
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
    def _gspo_averages_sequences(self) -> ActorConfig:
        if self.policy_loss == "gspo" and self.loss_agg_mode != "seq-mean-token-mean":
            raise ValueError(
                f"worker.actor.policy_loss=gspo is defined with loss_agg_mode seq-mean-token-mean (got "
                f"{self.loss_agg_mode}); set worker.actor.loss_agg_mode=seq-mean-token-mean"
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


# --------------------------------------------------------------------------- reward


class RMServeConfig(Section):
    model: str = Field(
        ...,
        description="Reward model to serve for the run: folder, merged checkpoint, alias, hub id or builtin:*.",
    )
    backend: Literal["hf", "vllm"] = Field(
        "vllm", description="vllm (GPU) or hf (transformers generate; CPU and development)."
    )
    gpus: int = Field(
        1,
        ge=0,
        description="GPUs the reward model's Ray actor reserves, beside the training workers' (0 on CPU).",
    )
    tensor_parallel_size: int = Field(
        1, gt=0, description="vLLM tensor-parallel size; must equal gpus with the vllm backend."
    )
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM share of its GPUs' memory.")
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description="Serving dtype.")
    max_new_tokens: int = Field(64, gt=0, description="Most tokens per reply.")
    max_restarts: int = Field(
        1,
        ge=0,
        description="Restarts after the served model dies (counted in rm/serve_restarts); then calls fail.",
    )
    health_interval: float = Field(
        2.0, gt=0, description="Seconds between health checks of the served model."
    )

    @model_validator(mode="after")
    def _tensor_parallel_fits(self) -> RMServeConfig:
        if self.backend == "vllm" and self.tensor_parallel_size != max(self.gpus, 1):
            raise ValueError(
                f"reward.thinking.serve.tensor_parallel_size ({self.tensor_parallel_size}) must equal "
                f"reward.thinking.serve.gpus ({self.gpus}) with the vllm backend"
            )
        return self


class ThinkingRewardConfig(Section):
    url: str | None = Field(
        None,
        description="OpenAI-compatible endpoint (base URL or .../chat/completions); default $OPENAI_API_URL; "
        "with neither, serve (a Ray actor) or serve_model (a built-in server) serves one for the run.",
    )
    model: str | None = Field(None, description="Served reward-model name; default $REWARD_MODEL.")
    api_key_env: EnvVarName = Field(
        "OPENAI_API_KEY", description="Environment variable holding the API key (never saved)."
    )
    serve_model: str | None = Field(
        None,
        description="Model a built-in reward server loads for the run when no url (nor $OPENAI_API_URL) is "
        "configured; unset, such a run stops before it starts.",
    )
    serve: RMServeConfig | None = Field(
        None,
        description="Serve this reward model as a Ray actor on its own GPUs for the run (health-checked, "
        "restarted on failure); a url or $OPENAI_API_URL still wins.",
    )
    concurrency: int = Field(64, gt=0, description="Requests in flight at once.")
    timeout: float = Field(60.0, gt=0, description="Seconds per request before it is retried.")
    max_retries: int = Field(5, ge=0, description="Retries on timeouts, connection errors, 429 and 5xx.")
    constrained: bool = Field(
        True, description="Ask the server to answer with one of the eleven scores when it can."
    )
    max_failure_fraction: float = Field(
        0.5, ge=0, le=1, description="Stop training when more than this share of RM calls fail ..."
    )
    min_coverage: float = Field(
        0.5,
        ge=0,
        le=1,
        description="... or when fewer than this share of groups used the thinking reward (the rest fell back "
        "to outcome-only after an RM failure); 0 turns this floor off.",
    )
    failure_patience: int = Field(3, gt=0, description="... for this many consecutive steps.")

    @model_validator(mode="after")
    def _one_way_to_serve(self) -> ThinkingRewardConfig:
        if self.serve is not None and self.serve_model:
            raise ValueError(
                "reward.thinking.serve and reward.thinking.serve_model both serve a reward model for the run; "
                "keep one (serve: a Ray actor on its own GPUs; serve_model: a built-in hf server on the driver)"
            )
        return self


class OverlongConfig(Section):
    enable: bool = Field(False, description="DAPO's soft over-length penalty on the final reward.")
    buffer_length: int = Field(
        256,
        gt=0,
        description="L_cache: the penalty falls linearly from 0 to -penalty_factor over the last this many "
        "tokens before data.max_response_length.",
    )
    penalty_factor: float = Field(1.0, ge=0, description="Size of the penalty at the length cap.")


class RewardConfig(Section):
    format_weight: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the outcome reward given to format alone (0 = format is a gate, as released).",
    )
    custom: dict[str, str] = Field(
        default_factory=dict,
        description="problem_type -> 'path/to/file.py:function' for extra question types.",
    )
    format_gate: bool = Field(
        True,
        description="false scores the <answer> content (or the whole response) without requiring the <think>/<answer> format; for custom rewards and smoke tests.",
    )
    thinking: ThinkingRewardConfig = Field(
        default_factory=ThinkingRewardConfig, description="Thinking reward model client."
    )
    overlong: OverlongConfig = Field(
        default_factory=OverlongConfig, description="DAPO overlong reward shaping."
    )


# --------------------------------------------------------------------------- trainer


LoggerName = Literal["console", "jsonl", "tensorboard", "wandb", "swanlab"]


class TrainerConfig(Section):
    total_epochs: int = Field(1, gt=0, description="Passes over the training data.")
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many steps (overrides epochs when smaller)."
    )
    stop_after_steps: int | None = Field(
        None,
        gt=0,
        description=(
            "End this invocation after this many steps (counted from where it started or resumed), with a "
            "checkpoint; schedules still span the whole run. Rerun with --resume auto to continue "
            "(jobs with a time limit, exact-resume checks). null runs to the end."
        ),
    )
    nnodes: int = Field(1, gt=0, description="Nodes in the Ray cluster to use.")
    n_workers_per_node: int = Field(
        8, gt=0, description="Worker actors (ranks) per node: GPUs per node on GPU."
    )
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto picks cuda when GPUs are visible."
    )
    project_name: Name = Field("sophiavl", description="Groups runs in loggers and the output folder.")
    experiment_name: Name = Field(
        "trust_grpo", description="Run name; the run dir is output_dir/project/experiment."
    )
    output_dir: str = Field("runs", description="Root folder of run directories.")
    logger: list[LoggerName] = Field(
        default_factory=lambda: ["console", "jsonl"], description="Metric sinks."
    )
    log_freq: int = Field(1, gt=0, description="Print a metrics table every this many steps.")
    val_freq: int = Field(-1, description="Validate every this many steps; -1 disables.")
    val_before_train: bool = Field(False, description="Validate once before the first step.")
    val_generations_to_log: int = Field(3, ge=0, description="Sample generations logged per validation.")
    rollout_dump_freq: int = Field(
        0, ge=0, description="Dump decoded rollouts to JSONL every this many steps; 0 disables."
    )
    save_freq: int = Field(300, description="Checkpoint every this many steps; -1 only at the end.")
    save_limit: int = Field(-1, description="Keep at most this many checkpoints; -1 keeps all.")
    seed: int = Field(1, description="Seed of model init, sampling and every RNG the run owns.")
    stop_grace_s: float = Field(
        300.0,
        gt=0,
        description="On Ctrl-C or SIGTERM: seconds the step in flight may take to finish (a checkpoint follows); "
        "past that, stop without it. Keep it under the scheduler's grace period minus the save time.",
    )
    collective_timeout: float = Field(
        600.0,
        gt=0,
        description="Seconds a worker waits in one collective before failing (a dead peer is caught sooner by Ray).",
    )


# --------------------------------------------------------------------------- recipe


class Recipe(Section):
    """A whole training recipe. Precedence: defaults < recipe YAML < dotted CLI overrides."""

    data: DataConfig = Field(default_factory=DataConfig, description="Training and validation data.")
    algorithm: AlgorithmConfig = Field(
        default_factory=AlgorithmConfig, description="Advantages, KL and Trust-GRPO."
    )
    worker: WorkerConfig = Field(
        default_factory=WorkerConfig, description="Actor, rollout and reference workers."
    )
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Outcome and thinking rewards.")
    trainer: TrainerConfig = Field(
        default_factory=TrainerConfig, description="Loop, logging and checkpoints."
    )

    @property
    def world_size(self) -> int:
        return self.trainer.nnodes * self.trainer.n_workers_per_node

    @property
    def updates_per_step(self) -> int:
        """Optimizer steps per PPO epoch of a training step: the rollout batch's mini-batches."""
        return self.data.rollout_batch_size // self.worker.actor.global_batch_size

    @property
    def optimizer_steps_per_step(self) -> int:
        """Optimizer steps one training step takes (what the LR schedule and resume count in)."""
        return self.updates_per_step * self.worker.actor.ppo_epochs

    @model_validator(mode="after")
    def _batches_divide(self) -> Recipe:
        """Reject batch sizes that cannot be split evenly, before any process starts."""
        actor, n = self.worker.actor, self.worker.rollout.n
        if self.data.rollout_batch_size % actor.global_batch_size:
            raise ValueError(
                f"data.rollout_batch_size ({self.data.rollout_batch_size}) must be a multiple of "
                f"worker.actor.global_batch_size ({actor.global_batch_size})"
            )
        sequences = actor.global_batch_size * n
        if sequences % self.world_size:
            raise ValueError(
                f"worker.actor.global_batch_size x worker.rollout.n ({sequences}) must be divisible by the world size "
                f"trainer.nnodes x trainer.n_workers_per_node ({self.world_size})"
            )
        if self.reward.overlong.enable and self.reward.overlong.buffer_length > self.data.max_response_length:
            raise ValueError(
                f"reward.overlong.buffer_length ({self.reward.overlong.buffer_length}) must not exceed "
                f"data.max_response_length ({self.data.max_response_length})"
            )
        if self.algorithm.dynamic_sampling.enable and n < 2:
            raise ValueError(
                "algorithm.dynamic_sampling needs worker.rollout.n >= 2 (a group of one never has differing rewards)"
            )
        per_rank = sequences // self.world_size
        if per_rank % actor.micro_batch_size_per_device_for_update:
            raise ValueError(
                f"sequences per rank per step ({per_rank} = global_batch_size x n / world size) must be a multiple of "
                f"worker.actor.micro_batch_size_per_device_for_update ({actor.micro_batch_size_per_device_for_update})"
            )
        return self
