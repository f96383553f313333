"""Short names for the Hugging Face repositories SophiaVL-R1 work uses.

An alias is only a spelling: `resolve_model("thinking-rm")` looks the repo up in the local HF
cache exactly as `resolve_model("bunny127/SophiaVL-R1-Thinking-Reward-Model-3B")` would.
"""

from __future__ import annotations

from typing import Literal

# The model most users come for: what `infer`, `eval` and a bare `download` use when no model is named.
DEFAULT_MODEL = "sophiavl-r1-7b"
# The name the released thinking reward model is served under (vLLM --served-model-name).
RM_SERVED_NAME = "thinking-reward-model"

# alias -> model repo id
ALIASES: dict[str, str] = {
    "sophiavl-r1-7b": "bunny127/SophiaVL-R1-7B",
    "thinking-rm": "bunny127/SophiaVL-R1-Thinking-Reward-Model-3B",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    # Qwen3-VL: the Instruct releases (dense 2B-32B; 30B-A3B is the MoE one)
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct",
    "qwen3-vl-32b": "Qwen/Qwen3-VL-32B-Instruct",
    "qwen3-vl-30b-a3b": "Qwen/Qwen3-VL-30B-A3B-Instruct",
    # Qwen3.5: natively multimodal, the post-trained releases carry no suffix (dense 0.8B-27B; MoE from 35B-A3B)
    "qwen3.5-0.8b": "Qwen/Qwen3.5-0.8B",
    "qwen3.5-2b": "Qwen/Qwen3.5-2B",
    "qwen3.5-4b": "Qwen/Qwen3.5-4B",
    "qwen3.5-9b": "Qwen/Qwen3.5-9B",
    "qwen3.5-27b": "Qwen/Qwen3.5-27B",
    "qwen3.5-35b-a3b": "Qwen/Qwen3.5-35B-A3B",
    "qwen3.5-122b-a10b": "Qwen/Qwen3.5-122B-A10B",
    "qwen3.5-397b-a17b": "Qwen/Qwen3.5-397B-A17B",
}

# alias -> (repo id, repo type); kept apart so a dataset name never resolves to a model
DATASET_ALIASES: dict[str, tuple[str, Literal["dataset"]]] = {
    "sophiavl-r1-130k": ("bunny127/SophiaVL-R1-130k", "dataset"),
    "thinking-156k": ("bunny127/SophiaVL-R1-Thinking-156k", "dataset"),
}


def model_repo_id(ref: str) -> str:
    """The repo id an alias stands for, or `ref` itself when it is not an alias."""
    return ALIASES.get(ref, ref)


def dataset_repo_id(ref: str) -> str:
    """The dataset repo id an alias stands for, or `ref` itself when it is not an alias."""
    return DATASET_ALIASES[ref][0] if ref in DATASET_ALIASES else ref
