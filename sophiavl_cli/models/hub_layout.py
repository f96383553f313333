"""Module-layout tensors -> the layout released checkpoints store, for whatever leaves the trainer.

transformers 5 loads MoE checkpoints through conversions (`conversion_mapping.py`) that fuse or
transpose expert weights, and its `save_pretrained` does not always undo them (Qwen3-VL-MoE's
fused experts come back in the module layout). vLLM's loaders read only the hub layout, so the
weight sync into vLLM, `sophiavl merge` and the built-in checkpoints all write it:

- Qwen3-VL-MoE: `mlp.experts.gate_up_proj` is `[E, 2I, H]` in the module and `[E, H, 2I]` on the
  hub; `mlp.experts.down_proj` is `[E, H, I]` and `[E, I, H]`: transposed (dims 1, 2).
- Qwen3.5-MoE: the hub holds one tensor per expert (`mlp.experts.{e}.gate_proj.weight`, `up_proj`,
  `down_proj`); the module fuses them (`gate_up_proj[e] = cat(gate, up)` along dim 0).

Every other tensor, and every tensor of the dense families, passes unchanged. transformers'
loader accepts both layouts for Qwen3-VL-MoE (it transposes only when the shape says so) and the
per-expert one for Qwen3.5-MoE, so a folder written here loads back into the same module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from sophiavl_cli.models.families import Family

if TYPE_CHECKING:
    import torch

GATE_UP = ".mlp.experts.gate_up_proj"
DOWN = ".mlp.experts.down_proj"


def hub_tensors(
    family: Family, named: Iterable[tuple[str, torch.Tensor]]
) -> Iterator[tuple[str, torch.Tensor]]:
    """(hub name, hub tensor) for a stream of (module name, tensor), one tensor held at a time."""
    for name, tensor in named:
        yield from hub_tensor(family, name, tensor)


def hub_tensor(family: Family, name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """The hub tensors one module tensor becomes (one, or one per expert and projection)."""
    fused = name.endswith(GATE_UP) or name.endswith(DOWN)
    if fused and family.fused_experts_transposed:
        yield name, tensor.transpose(1, 2).contiguous()
    elif fused and family.split_experts:
        prefix = name[: name.rindex(".mlp.experts.") + len(".mlp.experts.")]
        for expert, weight in enumerate(tensor):
            if name.endswith(GATE_UP):
                gate, up = weight.chunk(2, dim=0)
                yield f"{prefix}{expert}.gate_proj.weight", gate.contiguous()
                yield f"{prefix}{expert}.up_proj.weight", up.contiguous()
            else:
                yield f"{prefix}{expert}.down_proj.weight", weight.contiguous()
    else:
        yield name, tensor
