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

The way back (`module_parts`, `module_tensor`) is for what reads a hub folder beside trainer
tensors: the base model a LoRA adapter is merged into.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from sophiavl_cli.models.families import Family

if TYPE_CHECKING:
    import torch

GATE_UP = ".mlp.experts.gate_up_proj"
DOWN = ".mlp.experts.down_proj"
_ONE_EXPERT = re.compile(
    r"^(?P<prefix>.*\.mlp\.experts)\.(?P<expert>\d+)\.(?P<part>gate|up|down)_proj\.weight$"
)


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


def module_parts(family: Family, hub_names: Iterable[str]) -> dict[str, list[str]]:
    """{module name: the hub names it is built from, in order}, for every hub name.

    Qwen3.5-MoE's per-expert tensors group into the fused `gate_up_proj` (gate and up of expert 0,
    then of expert 1, ...) and `down_proj`; every other name stands for itself.
    """
    parts: dict[str, list[str]] = {}
    experts: dict[str, dict[int, dict[str, str]]] = {}
    for name in hub_names:
        match = _ONE_EXPERT.match(name) if family.split_experts else None
        if match is None:
            parts[name] = [name]
            continue
        by_part = experts.setdefault(match["prefix"], {}).setdefault(int(match["expert"]), {})
        by_part[match["part"]] = name
    for prefix, by_expert in experts.items():
        order = sorted(by_expert)
        parts[prefix + GATE_UP[len(".mlp.experts") :]] = [
            by_expert[e][p] for e in order for p in ("gate", "up") if p in by_expert[e]
        ]
        parts[prefix + DOWN[len(".mlp.experts") :]] = [
            by_expert[e]["down"] for e in order if "down" in by_expert[e]
        ]
    return parts


def module_shape(family: Family, name: str, hub_shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The module-layout shape of `name` built from hub tensors of `hub_shapes` (see `module_tensor`)."""
    fused = name.endswith(GATE_UP) or name.endswith(DOWN)
    if fused and family.fused_experts_transposed:
        (shape,) = hub_shapes
        return (shape[0], shape[2], shape[1], *shape[3:])
    if fused and family.split_experts:
        experts = len(hub_shapes) // 2 if name.endswith(GATE_UP) else len(hub_shapes)
        rows = sum(s[0] for s in hub_shapes[:2]) if name.endswith(GATE_UP) else hub_shapes[0][0]
        return (experts, rows, *hub_shapes[0][1:])
    (shape,) = hub_shapes
    return shape


def module_tensor(
    family: Family, name: str, hub: Mapping[str, torch.Tensor], parts: list[str]
) -> torch.Tensor:
    """The module-layout tensor `name` from its hub tensors (`parts`, as `module_parts` lists them)."""
    import torch

    fused = name.endswith(GATE_UP) or name.endswith(DOWN)
    if fused and family.fused_experts_transposed:
        return hub[parts[0]].transpose(1, 2).contiguous()
    if fused and family.split_experts:
        if name.endswith(GATE_UP):  # [gate_0, up_0, gate_1, up_1, ...] -> [E, 2I, H]
            pairs = zip(parts[::2], parts[1::2], strict=True)
            return torch.stack([torch.cat([hub[gate], hub[up]]) for gate, up in pairs])
        return torch.stack([hub[part] for part in parts])
    return hub[parts[0]]
