"""What a worker is made of: the trainable model (fp32 master weights, sharded), its AdamW, its forward.

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


def compute_dtype(device: str, dtype: str) -> torch.dtype | None:
    """bf16 compute on GPU unless the recipe asks for fp32; None (fp32 throughout) on CPU."""
    return torch.bfloat16 if device == "cuda" and dtype in ("auto", "bf16") else None


def load_trainable(
    model_dir: str,
    device: torch.device,
    param_dtype: torch.dtype | None,
    *,
    gradient_checkpointing: bool,
    freeze_vision_tower: bool,
    lora_config: LoraConfig | None = None,
) -> torch.nn.Module:
    """fp32 master weights, computed in `param_dtype` (bf16 on GPU); loaded once (rank 0) and sharded."""
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
        model_dir, dtype=torch.float32, device=device, param_dtype=param_dtype, prepare=prepare
    )
    model.train()
    return model


def load_frozen(model_dir: str, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A frozen copy (the reference): stored in the compute dtype, no fp32 master weights."""
    return fsdp.load_sharded(model_dir, dtype=dtype, device=device, prepare=_freeze)


def build_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters (all of them, or the LoRA adapters)."""
    return torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=optim.lr,
        betas=optim.betas,
        weight_decay=optim.weight_decay,
    )


def response_forward(model: torch.nn.Module, device: torch.device, padding_free: bool) -> ResponseForward:
    """Packing pays off only with flash-attention 2's varlen kernels (sdpa would build a [T, T] mask)."""
    packed = padding_free and model.config._attn_implementation == "flash_attention_2"
    return ResponseForward(model.config, device, packed=packed)


def _freeze(model: torch.nn.Module) -> None:
    model.requires_grad_(False)
