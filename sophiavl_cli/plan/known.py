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

KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "Qwen/Qwen2.5-VL-3B-Instruct": QWEN25_VL_3B,
    "Qwen/Qwen2.5-VL-7B-Instruct": QWEN25_VL_7B,
    "Qwen/Qwen2.5-VL-32B-Instruct": _qwen25_vl(5120, 27648, 64, 40, 8, 152064, False),
    "Qwen/Qwen2.5-VL-72B-Instruct": _qwen25_vl(8192, 29568, 80, 64, 8, 152064, False),
    "bunny127/SophiaVL-R1-7B": QWEN25_VL_7B,
    "bunny127/SophiaVL-R1-Thinking-Reward-Model-3B": QWEN25_VL_3B,
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
