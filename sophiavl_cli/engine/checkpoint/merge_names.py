"""Checkpoint tensor names -> the names the hub checkpoints use, checked against the model the config describes.

What changes with each model family (transformers' weight conversions, tied weights, wrapper
prefixes FSDP2 or torch.compile leave behind) lives here, apart from planning and writing the
merged folder (`merge.py`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sophiavl_cli.engine.checkpoint.merge_sources import (
    TensorSource,
)
from sophiavl_cli.errors import UserError

# Name segments other wrappers insert (torch.compile, DDP, FSDP1, activation checkpointing).
_WRAPPER_SEGMENTS = ("_orig_mod.", "module.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def match_names(names: list[str], hf_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Map checkpoint names to saved (hub-format) names, verified against the config's model.

    Accepts module names (what `get_state_dict` gives: `model.language_model.layers.0...`) and the
    hub names older checkpoints carry (`model.layers.0...`), after removing known wrapper segments.
    Returns (renames of every tensor, {tied target: its source} among the checkpoint's names, e.g.
    lm_head -> embed_tokens when the config ties embeddings); raises `UserError` on mismatches.
    """
    model = meta_model(hf_dir)
    module_names = list(model.state_dict().keys())
    tied = set(model.all_tied_weights_keys)  # {target: source}, empty unless the config ties weights
    to_saved = saved_name_map(model)
    from_saved = {saved: module for module, saved in to_saved.items()}

    renames: dict[str, str] = {}
    modules: dict[str, str] = {}  # module name -> checkpoint name
    unexpected: list[str] = []
    for name in names:
        module = _known_name(name, to_saved, from_saved) or _known_name(
            _strip_wrappers(name), to_saved, from_saved
        )
        if module is None:
            unexpected.append(name)
        else:
            renames[name] = to_saved[module]
            modules[module] = name
    missing = [n for n in module_names if n not in modules and n not in tied]
    if unexpected or missing:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} (e.g. {', '.join(unexpected[:3])})")
        raise UserError(
            f"checkpoint tensors do not match {hf_dir}/config.json: {'; '.join(parts)}; "
            "merge a checkpoint together with the huggingface/ folder it was trained from"
        )
    tied_pairs = {
        modules[target]: modules[source]
        for target, source in model.all_tied_weights_keys.items()
        if target in modules and source in modules
    }
    return renames, tied_pairs


def saved_name_map(model: Any) -> dict[str, str]:
    """{module parameter name: the name save_pretrained stores it under} for a (meta) model."""
    from transformers.core_model_loading import revert_weight_conversion

    # each name with its own (meta) tensor: a conversion may look at the shape (Qwen3-VL-MoE's experts).
    # A tensor saved as several (Qwen3.5-MoE's fused experts, one per expert on the hub) keeps its
    # module name: the writer splits it (models/hub_layout.py).
    saved = {}
    for name, tensor in model.state_dict().items():
        names = list(revert_weight_conversion(model, {name: tensor}))
        saved[name] = names[0] if len(names) == 1 else name
    return saved


def drop_true_copies(source: TensorSource, renames: dict[str, str], tied: dict[str, str]) -> list[str]:
    """Store a tied weight once, as save_pretrained does, but only when it really equals its source.

    A checkpoint can hold both halves with different values (the model was loaded untied because
    the files had both); transformers then keeps them apart, so the merge keeps both too.
    """
    dropped = []
    for target, origin in tied.items():
        pair = source.load([target, origin])
        if torch.equal(pair[target], pair[origin]):
            del renames[target]
            dropped.append(target)
    return dropped


def _known_name(name: str, to_saved: dict[str, str], from_saved: dict[str, str]) -> str | None:
    """The module name `name` stands for, whether it is a module name or a hub (saved) name."""
    return name if name in to_saved else from_saved.get(name)


def _strip_wrappers(name: str) -> str:
    """Remove wrapper segments (`_orig_mod.`, `module.`, ...) at the start or after a dot."""
    for segment in _WRAPPER_SEGMENTS:
        name = re.sub(rf"(^|\.){re.escape(segment)}", r"\1", name)
    return name


def meta_model(hf_dir: Path) -> Any:
    """The config's model with no memory behind it: only its parameter names and tied weights matter."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(hf_dir))
    architectures = getattr(config, "architectures", None) or []
    cls = getattr(transformers, architectures[0], None) if architectures else None
    if cls is None:
        raise UserError(
            f"{hf_dir}/config.json: unknown architectures {architectures}; transformers cannot build it"
        )
    with torch.device("meta"):
        return cls._from_config(config)
