"""The training recipe: one frozen pydantic tree, sectioned like the released SophiaVL/EasyR1 config.

Sections mirror the objects they build (`data`, `algorithm`, `worker.actor|rollout|ref`, `reward`,
`trainer`). Every field carries a description: it feeds `sophiavl recipe schema`, the editor
autocomplete and `docs/recipes.md`. Unknown keys are rejected (`extra="forbid"`); the loader turns
that into a did-you-mean message. Secrets are never fields: the API key is read from the environment
variable named in `reward.thinking.api_key_env` when a client is built.

This module holds the tree's root (`Recipe`, with the checks that span sections), the `data` and
`trainer` sections; `algorithm`, `worker` and `reward` live in their own modules, beside the code
they configure.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sophiavl_cli.config.algorithm import GROUP_ESTIMATORS, AlgorithmConfig
from sophiavl_cli.config.fields import Name, Section
from sophiavl_cli.config.reward import RewardConfig
from sophiavl_cli.config.worker import WorkerConfig

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

    @property
    def on_policy_update(self) -> bool:
        """One optimizer step per training step and no KL in the reward: the update's own forward
        gives the old log-probs, so the old log-prob pass does not run."""
        return self.optimizer_steps_per_step == 1 and not self.algorithm.kl_in_reward

    @property
    def uses_reference(self) -> bool:
        """The reference model is loaded only when its KL term (in the loss or the reward) can matter."""
        algo = self.algorithm
        return (algo.use_kl_loss or algo.kl_in_reward) and algo.kl_coef > 0

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
        if self.algorithm.adv_estimator in GROUP_ESTIMATORS and n < 2:
            raise ValueError(
                f"algorithm.adv_estimator={self.algorithm.adv_estimator} compares the rollouts of a prompt "
                "with each other, so worker.rollout.n=1 makes every advantage 0 and nothing trains: set "
                "worker.rollout.n >= 2 (the paper uses 8), or algorithm.adv_estimator=reinforce_plus_plus"
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
