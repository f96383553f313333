"""Architecture numbers shipped with the package, so a run can be planned before any download.

Each entry is the part of the released `config.json` the planner reads (`model_type` plus the shape
numbers), keyed by hub id; aliases (`hub.names.ALIASES`) resolve to these ids. Another family joins by
adding its `model_type` to `plan.architecture` and its released numbers here.

Sources and checks (a total is "checked" where a published figure for the checkpoint matched it):

- Qwen2.5-VL-{3B,7B,32B,72B}-Instruct: their released `config.json` files (text: the Qwen2.5 LLM of
  the same size; vision: 32 blocks of 1280, MLP 3420, 16 heads, merged into the text width). The
  SophiaVL-R1 checkpoints are fine-tunes that keep their base's architecture (SophiaVL-R1-7B:
  Qwen2.5-VL-7B; the thinking reward model: Qwen2.5-VL-3B). Totals 3.75B, 8.29B, 33.45B, 73.41B:
  the sizes the hub lists.
- Qwen3-VL-{2B,4B,8B,32B,30B-A3B}-Instruct: Alibaba's Pai-Megatron-Patch, `examples/qwen3_vl/
  run_mcore_qwen.sh` (per size: layers, width, heads, KV heads, MLP width, vocabulary 151,936, head
  dim 128, embeddings tied on 2B/4B only; 30B-A3B: 128 experts of width 768, 8 per token) and
  `megatron_patch/model/qwen3_vl/transformer_config.py` (vision: 2B/4B 24 blocks of 1024, MLP 4096,
  DeepStack from blocks 5, 11, 17; the others 27 blocks of 1152, MLP 4304, DeepStack from 8, 16,
  24; 16 heads, patch 16, 2,304 learned positions). 30B-A3B also as in p-doom/omegalax's Qwen3-VL
  config and THUDM/slime's model script. Checked: 4B 4.44B, 8B 8.77B, 30B-A3B 31.07B. Not checked
  (no published figure found): 2B 2.13B, 32B 33.36B.
- Qwen3.5-{0.8B,2B,4B,9B,27B,35B-A3B,122B-A10B,397B-A17B}: p-doom/omegalax's Qwen3.5 config (per
  size, text and vision) and an NVIDIA Megatron-Core Qwen3.5-VL config module (the same per-size
  language and vision settings), the text parts of 0.8B/4B/9B/27B/35B-A3B also in THUDM/slime's
  model scripts; common to all: head dim 256, Gated DeltaNet with 16 key heads, 128-wide heads,
  kernel 4, one full-attention layer in four, vocabulary 248,320, embeddings tied on 0.8B/2B/4B.
  The released checkpoints also hold a one-layer multi-token-prediction head that transformers
  does not build (not counted here: 2 h^2 + 3 h + one full-attention layer). With it, checked:
  9B 9.41B + 0.24B = 9.65B; 27B 27.36B + 0.42B = 27.78B (the bf16 index of Qwen3.6-27B, the same
  architecture: 55.56 GB); 397B-A17B 396.80B + 6.60B = 403.4B; 122B-A10B 122.56B + 2.52B = 125.1B
  against the 250 GB its bf16 files take (approximate). Not checked: 0.8B 0.85B, 2B 2.21B, 4B
  4.54B, 35B-A3B 35.11B (each without the MTP head).
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
