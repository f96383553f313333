"""A LoRA checkpoint as `sophiavl merge` reads it: the merged plain model, over the base it names.

Adapter-only checkpoints (the current layout) are merged into a base folder: `merge --base`, else
the run's `worker.actor.model_path`, checked against the config the run trained on. Older LoRA
checkpoints that also hold the base merge from their own tensors. Other checkpoints pass through.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import yaml

from sophiavl_cli.engine.checkpoint.merge_sources import HfFolderSource, ModuleLayoutSource, TensorSource
from sophiavl_cli.engine.workers import lora
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.config_diff import config_differences
from sophiavl_cli.models.families import family_of
from sophiavl_cli.models.resolve import resolve_model


def lora_merged_view(
    checkpoint: Path,
    source: TensorSource,
    hf_dir: Path,
    base: Path | None,
    name_map: Callable[[], dict[str, str]],
) -> TensorSource:
    """A LoRA run's checkpoint seen as the merged plain model; any other source unchanged.

    A LoRA checkpoint holds the adapter alone: the base comes from `base` (`merge --base`), else
    from the `worker.actor.model_path` its recipe.yaml records, and must have the config the run
    trained on (the checkpoint's `huggingface/config.json`). Older LoRA checkpoints also held the
    base (`...base_layer.weight`) and are merged from their own tensors. `name_map` gives the
    model's name -> saved-name map (built only when a base folder is read).
    """
    names = source.tensors()
    has_lora = any(lora.is_lora_name(name) for name in names)
    adapter_only = has_lora and not any(lora.BASE_SEGMENT + "." in name for name in names)
    if base is not None and not adapter_only:
        raise UserError(
            f"--base {base}: {checkpoint} holds every weight of its model (not a LoRA adapter checkpoint); "
            "merge it without --base"
        )
    if not has_lora:
        return source
    settings = lora.lora_settings(checkpoint / "recipe.yaml")
    if settings is None:
        raise UserError(
            f"{checkpoint}: the checkpoint holds LoRA adapters but its recipe.yaml names no worker.actor.lora "
            "rank; restore the checkpoint's recipe.yaml"
        )
    scale = float(settings["alpha"]) / int(settings["rank"])
    if not adapter_only:
        return lora.LoraMergedSource(source, scale)
    if base is not None:
        named = f"--base {base}"
        try:
            base_dir = resolve_model(str(base))
        except UserError as exc:
            raise UserError(f"{named}: {exc}") from None
    else:
        recipe = yaml.safe_load((checkpoint / "recipe.yaml").read_text(encoding="utf-8"))
        model_path = str(recipe["worker"]["actor"]["model_path"])
        named = f"worker.actor.model_path {model_path!r}"
        try:
            base_dir = resolve_model(model_path)
        except UserError as exc:
            raise UserError(
                f"{checkpoint} holds only the LoRA adapter and its base, {named}, is not here ({exc}); "
                "pass --base FOLDER with that model, or --adapter-only"
            ) from None
    _check_same_config(base_dir, hf_dir, named)
    family = family_of(json.loads((hf_dir / "config.json").read_text(encoding="utf-8")))
    base_source = ModuleLayoutSource(HfFolderSource(base_dir), family)
    return lora.LoraBaseSource(base_source, source, scale, name_map())


def _check_same_config(base_dir: Path, hf_dir: Path, named: str) -> None:
    """The base must be the model the adapter was trained on, else the adapter lands on other weights."""
    differ = config_differences(base_dir, hf_dir)
    if differ:
        raise UserError(
            f"{named} ({base_dir}) is not the model this adapter was trained on: its config.json differs from "
            f"the checkpoint's huggingface/config.json in {differ}; pass --base with the run's base model"
        )
