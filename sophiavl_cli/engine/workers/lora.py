"""LoRA on the policy through peft, and the name bookkeeping that makes it invisible elsewhere.

`apply_lora` injects peft LoRA layers into the language model's projections in place (no
`PeftModel` wrapper, so the model keeps its class, `_no_split_modules` and generation): a
targeted `...q_proj` becomes `...q_proj.base_layer.weight` (frozen) plus
`...q_proj.lora_A.default.weight` / `lora_B` (trainable). The vision tower is never adapted and
stays frozen. FSDP2 shards the result like any model; only the adapter has gradients, so only it
carries AdamW state.

Everything that leaves the worker sees plain transformers names: `merged_tensors` turns a stream
of (name, full tensor) into the merged weights `W + (alpha / r) * B @ A` (the weight sync to the
rollout engine), and `LoraBaseSource` does the same for `sophiavl merge`: a LoRA checkpoint holds
the adapter alone (its AdamW state too), and the frozen base comes from `worker.actor.model_path`.
`LoraMergedSource` reads the older LoRA checkpoints that held the base as well.
`adapter_tensors` / `write_adapter` give peft's own adapter folder (`--adapter-only`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ADAPTER = "default"  # peft's adapter name
BASE_SEGMENT = ".base_layer"
LORA_A, LORA_B = f".lora_A.{ADAPTER}.weight", f".lora_B.{ADAPTER}.weight"


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The vision encoder of a Qwen2/2.5-VL model (`model.visual`), or None."""
    return getattr(getattr(model, "model", model), "visual", None)


def freeze_vision_tower(model: nn.Module) -> int:
    """Stop gradients into the vision encoder; returns how many parameters were frozen."""
    tower = vision_tower(model)
    params = list(tower.parameters()) if tower is not None else []
    for param in params:
        param.requires_grad_(False)
    return sum(p.numel() for p in params)


def target_module_names(model: nn.Module, targets: Iterable[str] = DEFAULT_TARGETS) -> list[str]:
    """Full names of the `nn.Linear` modules to adapt: last name part in `targets`, outside the vision tower."""
    wanted = set(targets)
    tower = vision_tower(model)
    skip = {id(m) for m in tower.modules()} if tower is not None else set()
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in wanted and id(module) not in skip
    ]


def apply_lora(model: nn.Module, *, rank: int, alpha: float, dropout: float, targets: Iterable[str]) -> int:
    """Inject LoRA (peft) into `model` in place; freeze everything else. Returns trainable parameters."""
    from peft import LoraConfig, inject_adapter_in_model

    names = target_module_names(model, targets)
    if not names:
        raise ValueError(
            f"worker.actor.lora.target_modules {sorted(set(targets))} match no linear layer of the language model"
        )
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=names, bias="none")
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_A." in name or ".lora_B." in name)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def is_lora_name(name: str) -> bool:
    return ".lora_A." in name or ".lora_B." in name


def plain_name(name: str) -> str:
    """The transformers name of a base-layer tensor: `...q_proj.base_layer.weight` -> `...q_proj.weight`."""
    return name.replace(BASE_SEGMENT + ".", ".")


def merge_weight(base: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """W + scale * B @ A, computed in float32 and returned in W's dtype."""
    return (base.float() + scale * (b.float() @ a.float())).to(base.dtype)


def is_merge_input(name: str) -> bool:
    """Whether `merged_tensors` merges this parameter: an adapter's A / B or the base weight under it."""
    return is_lora_name(name) or name.endswith(BASE_SEGMENT + ".weight")


def merged_tensors(
    named: Iterable[tuple[str, torch.Tensor]], scale: float
) -> Iterator[tuple[str, torch.Tensor]]:
    """(transformers name, merged tensor) from a stream of a LoRA model's (name, full tensor).

    Streams: a base weight waits only until its module's A and B have passed (peft registers
    them right after it), so at most one module's tensors are held at once.
    """
    pending: dict[str, dict[str, torch.Tensor]] = {}
    for name, tensor in named:
        if name.endswith(LORA_A) or name.endswith(LORA_B):
            module = name[: -len(LORA_A)]
            pending.setdefault(module, {})["A" if name.endswith(LORA_A) else "B"] = tensor
        elif name.endswith(BASE_SEGMENT + ".weight"):
            module = name[: -len(BASE_SEGMENT + ".weight")]
            pending.setdefault(module, {})["W"] = tensor
        else:
            yield plain_name(name), tensor
            continue
        parts = pending[module]
        if len(parts) == 3:
            del pending[module]
            yield f"{module}.weight", merge_weight(parts["W"], parts["A"], parts["B"], scale)
    if pending:
        raise ValueError(f"LoRA modules without base weight or A/B: {sorted(pending)[:3]}")


def adapter_tensors(named: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The adapter alone under peft's saved names (`base_model.model.<module>.lora_A.weight`)."""
    out = {}
    for name, tensor in named:
        if is_lora_name(name):
            saved = name.replace(f".{ADAPTER}.weight", ".weight")
            out[f"base_model.model.{saved}"] = tensor.detach().cpu().contiguous()
    return out


def lora_settings(recipe_yaml: Path) -> dict[str, Any] | None:
    """`worker.actor.lora` of a checkpoint's recipe.yaml, or None when LoRA was off."""
    import yaml

    if not recipe_yaml.is_file():
        return None
    data = yaml.safe_load(recipe_yaml.read_text(encoding="utf-8")) or {}
    lora = ((data.get("worker") or {}).get("actor") or {}).get("lora") or {}
    return lora if int(lora.get("rank", 0) or 0) > 0 else None


class LoraMergedSource:
    """A checkpoint `TensorSource` of a LoRA run, seen as the merged plain model (for `sophiavl merge`)."""

    def __init__(self, source: Any, scale: float) -> None:
        self.source = source
        self.scale = scale
        self.label = f"{source.label} (LoRA merged)"
        self._raw = source.tensors()

    def tensors(self) -> dict[str, Any]:
        return {plain_name(name): info for name, info in self._raw.items() if not is_lora_name(name)}

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        raw_names = []
        for name in names:
            if name in self._raw:
                raw_names.append(name)
                continue
            module, leaf = name.rsplit(".", 1)
            raw_names.append(f"{module}{BASE_SEGMENT}.{leaf}")
            if leaf == "weight":
                raw_names += [module + LORA_A, module + LORA_B]
        loaded = self.source.load(raw_names)
        return dict(merged_tensors(((n, loaded[n]) for n in raw_names), self.scale))


class LoraBaseSource:
    """A base model's weights (saved names) with a LoRA checkpoint's adapters merged in (for `sophiavl merge`).

    `saved_name` maps a module's parameter name (`model.language_model.layers.0.self_attn.q_proj.weight`,
    as the adapter's names are) to the name the base folder stores it under.
    """

    def __init__(self, base: Any, adapter: Any, scale: float, saved_name: dict[str, str]) -> None:
        from sophiavl_cli.errors import UserError

        self.base = base
        self.adapter = adapter
        self.scale = scale
        self.label = f"{adapter.label} (LoRA adapter) + {base.label} (base)"
        infos = base.tensors()
        self._adapted: dict[str, str] = {}  # base name -> adapted module (adapter name prefix)
        for name, info in adapter.tensors().items():
            if not name.endswith(LORA_A):
                continue
            module = name[: -len(LORA_A)]
            target = saved_name.get(f"{module}.weight")
            b_info = adapter.tensors().get(module + LORA_B)
            if target not in infos or b_info is None:
                raise UserError(
                    f"{adapter.label}: adapter {module} has no base weight in {base.label} (or no lora_B); "
                    "worker.actor.model_path must name the model the run was trained from"
                )
            if (b_info.shape[0], info.shape[1]) != infos[target].shape:
                raise UserError(
                    f"adapter {module} ({b_info.shape[0]} x {info.shape[1]}) does not fit {target} "
                    f"{infos[target].shape} of {base.label}; worker.actor.model_path must name the model "
                    "the run was trained from"
                )
            self._adapted[target] = module

    def tensors(self) -> dict[str, Any]:
        return self.base.tensors()

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        out = self.base.load(names)
        modules = [self._adapted[n] for n in names if n in self._adapted]
        pairs = self.adapter.load([m + part for m in modules for part in (LORA_A, LORA_B)])
        for name in names:
            module = self._adapted.get(name)
            if module is not None:
                out[name] = merge_weight(
                    out[name], pairs[module + LORA_A], pairs[module + LORA_B], self.scale
                )
        return out


def write_adapter(
    source: Any, settings: dict[str, Any], base_model: str, output: Path, *, overwrite: bool = False
) -> Path:
    """Write peft's adapter folder (adapter_config.json + adapter_model.safetensors) atomically."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    output = Path(output)
    if output.exists() and not overwrite:
        from sophiavl_cli.errors import UserError

        raise UserError(f"{output}: already exists; pass --overwrite or another --output")
    names = [n for n in source.tensors() if is_lora_name(n)]
    tensors = adapter_tensors(source.load(names).items())
    modules = sorted({n.split(".lora_")[0] for n in names})
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = LoraConfig(
        r=int(settings["rank"]),
        lora_alpha=float(settings["alpha"]),
        lora_dropout=float(settings.get("dropout", 0.0)),
        target_modules=modules,
        bias="none",
        base_model_name_or_path=base_model,
    )
    config.save_pretrained(str(tmp))
    save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    if output.exists():
        shutil.rmtree(output)
    os.replace(tmp, output)
    return output
