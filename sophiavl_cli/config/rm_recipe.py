"""The thinking-reward-model SFT recipe (`sophiavl train-rm`): a sibling of `Recipe`, same loader.

A sibling model rather than a `kind` of `Recipe`: SFT has no rollout, reference, algorithm or
reward sections, and a recipe key the code cannot honour must be rejected, not carried along. The
sections it does share are the same classes (`TrainerConfig`, `OptimConfig`, `FSDPConfig`), so a
trainer key means the same thing in both, and `config.loading.load_recipe(path, overrides,
model=RMRecipe)` is the one loading path (YAML, dotted overrides, did-you-mean errors).

No pixel bounds here: images are resized by the model folder's own preprocessor config, which is
what the served reward model uses, so training and serving see the same image tokens.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from sophiavl_cli.config.fields import Section
from sophiavl_cli.config.recipe import TrainerConfig
from sophiavl_cli.config.worker import FSDPConfig, OptimConfig


class RMDataConfig(Section):
    train_files: str = Field(
        "builtin:thinking-demo@train",
        description="Datasets in the Thinking-156k layout (question, images, reasoning, score): registry names "
        "(name@split), files, folders, hub ids or builtin:thinking-demo.",
    )
    val_files: str | None = Field(
        "builtin:thinking-demo@val",
        description="Held-out rows for the RM evaluation (MAE, within 0.1, Spearman); null disables it.",
    )
    registry: str | None = Field(
        None,
        description="dataset_info.json to resolve names from; default $SOPHIAVL_DATASET_REGISTRY or ./dataset_info.json.",
    )
    max_length: int = Field(
        8192, gt=0, description="Prompt + target tokens (image tokens included); longer rows are dropped."
    )
    batch_size: int = Field(16, gt=0, description="Rows per optimizer step, over all ranks.")
    max_val_rows: int | None = Field(
        None, gt=0, description="Evaluate on at most this many held-out rows (the first ones); null: all."
    )
    shuffle: bool = Field(True, description="Shuffle training rows each epoch (seeded by data.seed).")
    seed: int = Field(1, description="Seed of the data order.")


class RMOptimConfig(OptimConfig):
    """`OptimConfig` with SFT defaults (the policy's are RL's: 6e-7, constant)."""

    lr: float = Field(1e-5, gt=0, description="AdamW learning rate.")
    lr_scheduler: Literal["constant", "cosine", "linear"] = Field(
        "cosine", description="LR schedule after warm-up."
    )
    lr_warmup_ratio: float = Field(
        0.1, ge=0, le=1, description="Fraction of steps spent warming the LR up linearly."
    )


class RMModelConfig(Section):
    model_path: str = Field(
        "builtin:tiny-qwen2.5-vl",
        description="Base model to fine-tune: a local folder, hub id in the cache, alias or builtin:* model.",
    )
    micro_batch_size_per_device: int = Field(
        2, gt=0, description="Rows per forward/backward on one rank (gradients accumulate over the rest)."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward to save memory."
    )
    dtype: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="Training dtype: auto is bf16 on GPU, fp32 on CPU."
    )
    freeze_vision_tower: bool = Field(False, description="Keep the vision encoder's weights fixed.")
    padding_free: bool = Field(
        True, description="Pack rows without padding in forwards (GPU with flash-attn installed)."
    )
    optim: RMOptimConfig = Field(default_factory=RMOptimConfig, description="Optimizer and schedule.")
    fsdp: FSDPConfig = Field(
        default_factory=FSDPConfig,
        description="FSDP2 sharding (always full; CPU offload is not implemented).",
    )


class RMRecipe(Section):
    """A reward-model SFT recipe. Precedence: defaults < recipe YAML < dotted CLI overrides."""

    data: RMDataConfig = Field(default_factory=RMDataConfig, description="Training and held-out data.")
    model: RMModelConfig = Field(default_factory=RMModelConfig, description="Base model and its update.")
    trainer: TrainerConfig = Field(
        default_factory=lambda: TrainerConfig(total_epochs=2, experiment_name="thinking_rm"),
        description="Loop, logging and checkpoints (the same section as `sophiavl train`'s).",
    )

    @property
    def world_size(self) -> int:
        return self.trainer.nnodes * self.trainer.n_workers_per_node

    @property
    def optimizer_steps_per_step(self) -> int:
        """One optimizer step per training step (what the LR schedule and resume count in)."""
        return 1

    @model_validator(mode="after")
    def _batches_divide(self) -> RMRecipe:
        per_rank, rest = divmod(self.data.batch_size, self.world_size)
        if rest or per_rank == 0:
            raise ValueError(
                f"data.batch_size ({self.data.batch_size}) must be a positive multiple of the world size "
                f"trainer.nnodes x trainer.n_workers_per_node ({self.world_size})"
            )
        if per_rank % self.model.micro_batch_size_per_device:
            raise ValueError(
                f"rows per rank per step ({per_rank} = data.batch_size / world size) must be a multiple of "
                f"model.micro_batch_size_per_device ({self.model.micro_batch_size_per_device})"
            )
        fsdp = self.model.fsdp
        if fsdp.offload_params or fsdp.offload_optimizer or not fsdp.full_shard:
            raise ValueError(
                "model.fsdp: train-rm always shards fully and has no CPU offload; leave full_shard=true and "
                "offload_params / offload_optimizer false"
            )
        if self.trainer.rollout_dump_freq:
            raise ValueError("trainer.rollout_dump_freq: train-rm has no rollouts to dump; leave it at 0")
        return self
