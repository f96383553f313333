"""What a worker is made of: the trainable model (fp32 master weights, or bf16 ones: pure bf16), its AdamW, its forward.

`train` and `train-rm` build their trainable model the same way (rank 0 loads, FSDP2 shards,
gradient checkpointing, frozen vision tower, LoRA adapters injected before sharding); a change of
precision, optimizer or model family lands here once for both.
"""

from __future__ import annotations

import torch

from sophiavl_cli.config.worker import LoraConfig, OptimConfig
from sophiavl_cli.engine.parallel import fsdp
from sophiavl_cli.engine.workers import lora
from sophiavl_cli.engine.workers.forward import ResponseForward
from sophiavl_cli.engine.workers.kahan_adamw import KahanAdamW
from sophiavl_cli.models.families import packing_supported


def compute_dtype(device: str, dtype: str, master_dtype: str = "fp32") -> torch.dtype | None:
    """bf16 compute on GPU unless the recipe asks for fp32, and wherever the weights are bf16 (pure
    bf16, CPU included); None (fp32 throughout) otherwise."""
    pure_bf16 = master_dtype == "bf16"
    return torch.bfloat16 if pure_bf16 or (device == "cuda" and dtype in ("auto", "bf16")) else None


def load_trainable(
    model_dir: str,
    device: torch.device,
    param_dtype: torch.dtype | None,
    *,
    gradient_checkpointing: bool,
    freeze_vision_tower: bool,
    lora_config: LoraConfig | None = None,
    master_dtype: str = "fp32",
    full_shard: bool = True,
) -> torch.nn.Module:
    """fp32 master weights computed in `param_dtype` (bf16 on GPU), or bf16 weights computed in bf16
    (`master_dtype=bf16`: no mixed-precision policy); loaded once (rank 0) and sharded."""
    pure_bf16 = master_dtype == "bf16"
    adapters = lora_config is not None and lora_config.rank > 0

    def prepare(model: torch.nn.Module) -> None:
        if gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if freeze_vision_tower or adapters:
            lora.freeze_vision_tower(model)
        if adapters:  # rank 0's adapter init reaches every rank with the weights
            assert lora_config is not None
            lora.apply_lora(
                model,
                rank=lora_config.rank,
                alpha=lora_config.alpha,
                dropout=lora_config.dropout,
                targets=lora_config.target_modules,
            )

    model = fsdp.load_sharded(
        model_dir,
        dtype=torch.bfloat16 if pure_bf16 else torch.float32,
        device=device,
        param_dtype=None if pure_bf16 else param_dtype,
        prepare=prepare,
        full_shard=full_shard,
    )
    model.train()
    return model


def load_frozen(
    model_dir: str, device: torch.device, dtype: torch.dtype, *, full_shard: bool = True
) -> torch.nn.Module:
    """A frozen copy (the reference): stored in the compute dtype, no fp32 master weights. Without
    `full_shard` its blocks stay gathered from the first micro-batch of a pass to its end."""
    return fsdp.load_sharded(model_dir, dtype=dtype, device=device, prepare=_freeze, full_shard=full_shard)


def build_optimizer(
    model: torch.nn.Module, optim: OptimConfig, master_dtype: str = "fp32"
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (all of them, or the LoRA adapters); for bf16 weights with
    bf16 state and Kahan-compensated updates."""
    adamw = KahanAdamW if master_dtype == "bf16" else torch.optim.AdamW
    return adamw(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
    )


def response_forward(model: torch.nn.Module, device: torch.device, padding_free: bool) -> ResponseForward:
    """Packing pays off only with flash-attention 2's varlen kernels (sdpa would build a [T, T] mask),
    and keeps sequences apart only without linear-attention layers (`models.families.packing_supported`)."""
    packed = (
        padding_free
        and model.config._attn_implementation == "flash_attention_2"
        and packing_supported(model.config)
    )
    return ResponseForward(model.config, device, packed=packed)


def _freeze(model: torch.nn.Module) -> None:
    model.requires_grad_(False)
