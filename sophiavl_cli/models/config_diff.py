"""Whether two model folders describe the same network: their `config.json`, key by key.

A checkpoint keeps a copy of the config it was trained with (`huggingface/config.json`) but a LoRA
checkpoint keeps no base weights, and any resume rebuilds the architecture from
`worker.actor.model_path`. Pointing either at another model (a moved folder refilled with a newer
release, a 3B in place of a 7B) would otherwise merge or train on the wrong network without a word.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sophiavl_cli.errors import UserError

# Keys that name, date or store a copy rather than describe the network (a base saved again by a
# newer transformers writes `dtype` for `torch_dtype`; merge and training pick the dtype themselves).
NOT_THE_NETWORK = frozenset({"_name_or_path", "transformers_version", "_commit_hash", "torch_dtype", "dtype"})


def config_differences(model_dir: Path, trained_dir: Path, limit: int = 3) -> str | None:
    """`key value vs value, ...` for the config keys where `model_dir` differs from `trained_dir`
    (at most `limit` shown), or None when they describe the same network."""
    mine, trained = _flat(_read(model_dir)), _flat(_read(trained_dir))
    differ = sorted(key for key in mine.keys() | trained.keys() if mine.get(key) != trained.get(key))
    if not differ:
        return None
    shown = ", ".join(f"{key} {mine.get(key)!r} vs {trained.get(key)!r}" for key in differ[:limit])
    return shown + (", ..." if len(differ) > limit else "")


def _read(folder: Path) -> Any:
    path = Path(folder) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read it ({exc}); the model folder needs its config.json") from None


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(config, dict):
        return {prefix: config}
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key not in NOT_THE_NETWORK:
            out |= _flat(value, f"{prefix}.{key}" if prefix else key)
    return out
