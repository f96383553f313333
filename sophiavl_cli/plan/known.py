"""Architecture numbers shipped with the package, so a run can be planned before any download.

Each entry is the part of the released `config.json` the planner reads (`model_type` plus the shape
numbers), keyed by hub id; aliases (`hub.names.ALIASES`) resolve to these ids. Another family joins by
adding its `model_type` to `plan.architecture` and its released numbers here.

Sources: the released `config.json` files of Qwen/Qwen2.5-VL-{3B,7B,32B,72B}-Instruct (text: the
Qwen2.5 LLM of the same size; vision: 32 blocks of 1280, MLP 3420, 16 heads, merged into the text
width). The SophiaVL-R1 checkpoints are fine-tunes that keep their base's architecture
(SophiaVL-R1-7B: Qwen2.5-VL-7B; the thinking reward model: Qwen2.5-VL-3B). The parameter totals these
give (3.75B, 8.29B, 33.45B, 73.41B) are the sizes the hub lists for those checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import ALIASES, DATASET_ALIASES

_VISION_25 = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "spatial_merge_size": 2,
}


def _qwen25_vl(
    hidden: int, intermediate: int, layers: int, heads: int, kv: int, vocab: int, tie: bool
) -> dict:
    return {
        "model_type": "qwen2_5_vl",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "vocab_size": vocab,
        "tie_word_embeddings": tie,
        "max_position_embeddings": 128000,
        "vision_config": {**_VISION_25, "out_hidden_size": hidden},
    }


QWEN25_VL_3B = _qwen25_vl(2048, 11008, 36, 16, 2, 151936, True)
QWEN25_VL_7B = _qwen25_vl(3584, 18944, 28, 28, 4, 152064, False)

# Qwen3-VL and Qwen3.5 vision towers: (depth, width, MLP width, heads); patch 16, merge 2, a 48 x 48
# learned position grid
_VIT_SMALL = (12, 768, 3072, 12)
_VIT_MEDIUM = (24, 1024, 4096, 16)
_VIT_LARGE = (27, 1152, 4304, 16)


def _qwen3_vision(vit: tuple[int, int, int, int], out: int, deepstack: list[int]) -> dict:
    depth, hidden, intermediate, heads = vit
    return {
        "depth": depth,
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_heads": heads,
        "out_hidden_size": out,
        "patch_size": 16,
        "temporal_patch_size": 2,
        "spatial_merge_size": 2,
        "in_channels": 3,
        "num_position_embeddings": 2304,
        "deepstack_visual_indexes": deepstack,
    }


def _qwen3_vl(
    hidden: int, intermediate: int, layers: int, heads: int, kv: int, tie: bool, moe: dict | None = None
) -> dict:
    """Qwen3-VL: the Qwen3 decoder (head_dim 128, vocabulary 151,936) and a DeepStack vision tower:
    the medium one with DeepStack from blocks 5, 11, 17 on the tied 2B and 4B, the large one from
    blocks 8, 16, 24 on the others."""
    small = tie
    text = {
        "model_type": "qwen3_vl_moe_text" if moe else "qwen3_vl_text",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": 128,
        "vocab_size": 151936,
        "tie_word_embeddings": tie,
        "max_position_embeddings": 262144,
        **(moe or {}),
    }
    vision = _qwen3_vision(
        _VIT_MEDIUM if small else _VIT_LARGE, hidden, [5, 11, 17] if small else [8, 16, 24]
    )
    return {
        "model_type": "qwen3_vl_moe" if moe else "qwen3_vl",
        "tie_word_embeddings": tie,
        "text_config": text,
        "vision_config": vision,
    }


def _qwen3_5(
    hidden: int,
    layers: int,
    heads: int,
    kv: int,
    value_heads: int,
    tie: bool,
    vit: tuple[int, int, int, int],
    *,
    intermediate: int = 0,
    moe: dict | None = None,
) -> dict:
    """Qwen3.5: three Gated DeltaNet layers (16 key heads, 128-wide heads, kernel 4) then one gated
    full-attention layer (head_dim 256), repeated; vocabulary 248,320; no DeepStack."""
    text = {
        "model_type": "qwen3_5_moe_text" if moe else "qwen3_5_text",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": 256,
        "vocab_size": 248320,
        "tie_word_embeddings": tie,
        "max_position_embeddings": 262144,
        "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(layers)],
        "linear_num_key_heads": 16,
        "linear_num_value_heads": value_heads,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        **({"intermediate_size": intermediate} if intermediate else {}),
        **(moe or {}),
    }
    return {
        "model_type": "qwen3_5_moe" if moe else "qwen3_5",
        "tie_word_embeddings": tie,
        "text_config": text,
        "vision_config": _qwen3_vision(vit, hidden, []),
    }


def _experts(experts: int, top_k: int, width: int, shared: int = 0) -> dict:
    routed = {"num_experts": experts, "num_experts_per_tok": top_k, "moe_intermediate_size": width}
    return routed | ({"shared_expert_intermediate_size": shared} if shared else {"decoder_sparse_step": 1})


KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": QWEN25_VL_3B,
    "Qwen/Qwen2.5-VL-7B-Instruct": QWEN25_VL_7B,
    "Qwen/Qwen2.5-VL-32B-Instruct": _qwen25_vl(5120, 27648, 64, 40, 8, 152064, False),
    "Qwen/Qwen2.5-VL-72B-Instruct": _qwen25_vl(8192, 29568, 80, 64, 8, 152064, False),
    "bunny127/SophiaVL-R1-7B": QWEN25_VL_7B,
    "bunny127/SophiaVL-R1-Thinking-Reward-Model-3B": QWEN25_VL_3B,
    "Qwen/Qwen3-VL-2B-Instruct": _qwen3_vl(2048, 6144, 28, 16, 8, True),
    "Qwen/Qwen3-VL-4B-Instruct": _qwen3_vl(2560, 9728, 36, 32, 8, True),
    "Qwen/Qwen3-VL-8B-Instruct": _qwen3_vl(4096, 12288, 36, 32, 8, False),
    "Qwen/Qwen3-VL-32B-Instruct": _qwen3_vl(5120, 25600, 64, 64, 8, False),
    "Qwen/Qwen3-VL-30B-A3B-Instruct": _qwen3_vl(2048, 6144, 48, 32, 4, False, _experts(128, 8, 768)),
    "Qwen/Qwen3.5-0.8B": _qwen3_5(1024, 24, 8, 2, 16, True, _VIT_SMALL, intermediate=3584),
    "Qwen/Qwen3.5-2B": _qwen3_5(2048, 24, 8, 2, 16, True, _VIT_MEDIUM, intermediate=6144),
    "Qwen/Qwen3.5-4B": _qwen3_5(2560, 32, 16, 4, 32, True, _VIT_MEDIUM, intermediate=9216),
    "Qwen/Qwen3.5-9B": _qwen3_5(4096, 32, 16, 4, 32, False, _VIT_LARGE, intermediate=12288),
    "Qwen/Qwen3.5-27B": _qwen3_5(5120, 64, 24, 4, 48, False, _VIT_LARGE, intermediate=17408),
    "Qwen/Qwen3.5-35B-A3B": _qwen3_5(2048, 40, 16, 2, 32, False, _VIT_LARGE, moe=_experts(256, 8, 512, 512)),
    "Qwen/Qwen3.5-122B-A10B": _qwen3_5(
        3072, 48, 32, 2, 64, False, _VIT_LARGE, moe=_experts(256, 8, 1024, 1024)
    ),
    "Qwen/Qwen3.5-397B-A17B": _qwen3_5(
        4096, 60, 32, 2, 64, False, _VIT_LARGE, moe=_experts(512, 10, 1024, 1024)
    ),
}


def model_config(ref: str) -> tuple[dict[str, Any], str]:
    """(config.json as a dict, where it came from) for a model reference, without reading weights.

    A local folder, a built-in model or a cached hub snapshot gives its own `config.json`; a known hub
    id or alias that is not downloaded yet gives the shipped numbers. Anything else is a `UserError`.
    """
    from sophiavl_cli.models.resolve import BUILTIN_PREFIX, resolve_model

    ref = ref.strip()
    local = Path(ref).expanduser()
    if local.is_dir() or ref.startswith(BUILTIN_PREFIX):
        folder = resolve_model(ref)  # a built-in model is built on first use (a few MB, seconds)
        return _read(folder / "config.json"), f"config.json in {folder}"
    if ref in DATASET_ALIASES:
        raise UserError(f"{ref} is a dataset alias, not a model; plan with a model folder, alias or hub id")
    repo_id = ALIASES.get(ref, ref)
    try:
        folder = resolve_model(repo_id)
        return _read(folder / "config.json"), f"config.json of {repo_id} in the local cache"
    except UserError:
        if repo_id in KNOWN_CONFIGS:
            return KNOWN_CONFIGS[repo_id], f"numbers shipped for {repo_id} (not downloaded)"
        raise UserError(
            f"model {ref}: not a folder, not in the local cache and not one the planner ships numbers for "
            f"({', '.join(sorted(KNOWN_CONFIGS))}); `sophiavl download {ref}` fetches its config, or pass a folder"
        ) from None


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(
            f"{path}: cannot read the model's config.json ({exc}); is the folder complete?"
        ) from exc
