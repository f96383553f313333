"""The ids that end a generation and pad a batch, found one way for every backend.

Stop ids are the model folder's `generation_config.json` `eos_token_id` (an id or a list; Qwen2.5-VL
lists both `<|im_end|>` and `<|endoftext|>`) plus the tokenizer's EOS when it is not among them.
The pad id is the tokenizer's, else the first stop id.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sophiavl_cli.errors import UserError


def stop_token_ids(model_dir: str | Path, tokenizer: Any) -> list[int]:
    """End-of-turn ids for the model in `model_dir`; a one-line error when neither file names one."""
    ids: list[int] = []
    config = Path(model_dir) / "generation_config.json"
    if config.is_file():
        configured = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
        ids = [
            int(i) for i in (configured if isinstance(configured, list) else [configured]) if i is not None
        ]
    if tokenizer.eos_token_id is not None and int(tokenizer.eos_token_id) not in ids:
        ids.append(int(tokenizer.eos_token_id))
    if not ids:
        raise UserError(
            f"{model_dir}: neither generation_config.json nor the tokenizer names an EOS token; add one"
        )
    return ids


def pad_token_id(tokenizer: Any, stop_ids: list[int]) -> int:
    """The tokenizer's pad id, else the first stop id (Qwen tokenizers have one; some exports do not)."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else int(stop_ids[0])
