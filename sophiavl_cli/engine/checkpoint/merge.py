"""Checkpoint -> Hugging Face folder (`sophiavl merge`): safetensors + config, tokenizer, processor.

Reads a sophiavl checkpoint (`global_step_N/dcp/`, any world size) or the released SophiaVL-R1 /
EasyR1 layout (`global_step_N/actor/model_world_size_W_rank_R.pt` + `actor/huggingface/`) in one
plain process (no process group), and writes what `save_pretrained` would: the tensor names the
hub checkpoints use (transformers' own `revert_weight_conversion`, e.g. `model.language_model.*`
back to `model.*`), tied weights stored once, shards of at most `max_shard_size` with a
`model.safetensors.index.json`, and every non-weight file of the checkpoint's `huggingface/`
folder, the generation config included (the released merger dropped it).

The checkpoint's names are checked against the model the config describes before anything is
written: a checkpoint of another model, or a wrapper prefix that is not a known one, is an error
naming the first mismatched keys. The output appears atomically (temp folder + rename).

Usage:
    plan = plan_merge(Path("runs/sophiavl/trust_grpo/checkpoints/global_step_40"))
    result = run_merge(plan, advance=progress_bar.advance)   # advance(nbytes) per tensor group
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from sophiavl_cli.engine.checkpoint.integrity import verify_checkpoint
from sophiavl_cli.engine.checkpoint.layout import (
    COMPLETE_MARKER,
    DCP_DIRNAME,
    HF_DIRNAME,
    copy_hf_files,
    step_of,
)
from sophiavl_cli.engine.checkpoint.merge_lora import lora_merged_view
from sophiavl_cli.engine.checkpoint.merge_names import (
    drop_true_copies,
    match_names,
    meta_model,
    saved_name_map,
)
from sophiavl_cli.engine.checkpoint.merge_sources import (
    DcpSource,
    ReleasedSource,
    TensorSource,
    released_actor_dir,
)
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.lifecycle.preflight import check_writable
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.families import family_of
from sophiavl_cli.models.hub_layout import hub_tensor

DtypeChoice = Literal["auto", "bf16", "fp32"]
_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
_CONFIG_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_UNITS = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


@dataclass
class MergePlan:
    """Everything `run_merge` needs, decided (and validated) before any byte is written."""

    checkpoint: Path
    layout: Literal["sophiavl", "released"]
    source: TensorSource
    hf_dir: Path
    output: Path
    dtype: torch.dtype
    renames: dict[str, str]  # checkpoint name -> saved name (tied copies equal to their source are left out)
    shards: dict[str, list[str]]  # output file -> checkpoint names (huggingface_hub's split)
    total_bytes: int
    overwrite: bool = False
    dropped: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MergeResult:
    output: Path
    files: list[str]
    num_tensors: int
    total_bytes: int
    dtype: torch.dtype


def parse_size(text: str | int) -> int:
    """'5GB' -> 5_000_000_000 (decimal units, as transformers), '512MiB' -> binary; plain ints are bytes."""
    if isinstance(text, int):
        return text
    match = _SIZE_RE.match(text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--max-shard-size {text!r}: use a size like 5GB, 500MB or 2GiB")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])


# --------------------------------------------------------------------------- finding checkpoints


def find_default_checkpoint(runs_root: Path = Path("runs"), say: Callable[[str], None] | None = None) -> Path:
    """The latest complete checkpoint of the run that most recently completed one under `runs_root`.

    Runs live at `runs_root/<project>/<experiment>/checkpoints/` (any depth up to 3 is searched).
    `say` hears about the chosen run's checkpoints passed over (`CheckpointManager.find_latest`).
    """
    candidates: list[tuple[float, Path, list[str]]] = []
    for depth in ("*/checkpoints", "*/*/checkpoints", "*/*/*/checkpoints"):
        for folder in Path(runs_root).glob(depth):
            notes: list[str] = []
            latest = CheckpointManager(folder).find_latest(notes.append)
            if latest is not None:
                candidates.append((latest.stat().st_mtime, latest, notes))
    if not candidates:
        raise UserError(
            f"no complete checkpoint under {runs_root}/; pass CHECKPOINT (a global_step_N folder)"
        )
    _, chosen, notes = max(candidates, key=lambda c: c[0])
    if say is not None:
        for note in notes:
            say(note)
    return chosen


def default_output(checkpoint: Path) -> Path:
    """`<run>/merged/global_step_N` for a run's checkpoint (outlives save_limit pruning), else `<checkpoint>/merged`."""
    checkpoint = Path(checkpoint)
    if checkpoint.parent.name == "checkpoints" and step_of(checkpoint) is not None:
        return checkpoint.parent.parent / "merged" / checkpoint.name
    return checkpoint / "merged"


def open_checkpoint(
    checkpoint: Path, force: bool = False
) -> tuple[Literal["sophiavl", "released"], TensorSource, Path]:
    """(layout, tensor source, huggingface folder) for a sophiavl or released checkpoint folder.

    A sophiavl checkpoint must carry its `complete` marker (else the save may have been cut short;
    `force` merges it anyway) and every file it lists must match its size and checksum.
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        raise UserError(f"{checkpoint}: no such folder; pass a global_step_N checkpoint folder")
    if (checkpoint / DCP_DIRNAME / ".metadata").is_file():
        if not (checkpoint / COMPLETE_MARKER).is_file():
            if not force:
                raise UserError(
                    f"{checkpoint}: incomplete checkpoint (no {COMPLETE_MARKER} marker: the save was interrupted); "
                    "merge an older global_step_N, or pass --force to merge it anyway"
                )
        else:
            problem = verify_checkpoint(checkpoint)
            if problem is not None:
                raise UserError(f"cannot merge {checkpoint}: {problem}; merge an older global_step_N")
        return "sophiavl", DcpSource(checkpoint / DCP_DIRNAME), checkpoint / HF_DIRNAME
    actor = released_actor_dir(checkpoint)
    if actor is not None:
        return "released", ReleasedSource(actor), actor / HF_DIRNAME
    raise UserError(
        f"{checkpoint}: neither a sophiavl checkpoint ({DCP_DIRNAME}/.metadata) nor the released layout "
        "(actor/model_world_size_W_rank_R.pt); pass a global_step_N folder"
    )


# --------------------------------------------------------------------------- planning


def plan_merge(
    checkpoint: Path,
    output: Path | None = None,
    dtype: DtypeChoice = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    force: bool = False,
    base: Path | None = None,
) -> MergePlan:
    """Check the output folder can be written, open and verify the checkpoint, check its names
    against the config's model, choose dtype and shards. `base`: a LoRA checkpoint's base model
    folder when it is no longer where the run's `worker.actor.model_path` said."""
    output = Path(output) if output is not None else default_output(Path(checkpoint))
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; pass --overwrite or another --output")
    check_writable(output)
    layout, source, hf_dir = open_checkpoint(checkpoint, force=force)
    if not (hf_dir / "config.json").is_file():
        raise UserError(
            f"{hf_dir}/config.json is missing; the checkpoint needs its huggingface/ folder to merge"
        )
    source = lora_merged_view(
        Path(checkpoint), source, hf_dir, base, lambda: saved_name_map(meta_model(hf_dir))
    )
    infos = source.tensors()
    renames, tied = match_names(list(infos), hf_dir)
    dropped = drop_true_copies(source, renames, tied)
    target = _target_dtype(dtype, hf_dir, infos)
    sizes = {name: _cast_info(infos[name], target) for name in renames}
    shards = _split(list(renames), sizes, parse_size(max_shard_size))
    return MergePlan(
        checkpoint=Path(checkpoint),
        layout=layout,
        source=source,
        hf_dir=hf_dir,
        output=output,
        dtype=target,
        renames=renames,
        shards=shards,
        total_bytes=sum(sizes.values()),
        overwrite=overwrite,
        dropped=dropped,
    )


def export_adapter(
    checkpoint: Path, output: Path | None = None, overwrite: bool = False, base: Path | None = None
) -> Path:
    """Write a LoRA checkpoint's adapter alone as a peft folder (`sophiavl merge --adapter-only`);
    its `base_model_name_or_path` is `base` when given, else the run's `worker.actor.model_path`."""
    import yaml

    from sophiavl_cli.engine.workers import lora

    checkpoint = Path(checkpoint)
    _, source, _ = open_checkpoint(checkpoint)
    settings = lora.lora_settings(checkpoint / "recipe.yaml")
    if settings is None or not any(lora.is_lora_name(name) for name in source.tensors()):
        raise UserError(
            f"{checkpoint}: not a LoRA checkpoint (worker.actor.lora.rank was 0); merge it without --adapter-only"
        )
    recipe = yaml.safe_load((checkpoint / "recipe.yaml").read_text(encoding="utf-8"))
    base_model = str(base) if base is not None else str(recipe["worker"]["actor"]["model_path"])
    target = (
        Path(output)
        if output is not None
        else default_output(checkpoint).with_name(default_output(checkpoint).name + "-adapter")
    )
    return lora.write_adapter(source, settings, base_model, target, overwrite=overwrite)


def _target_dtype(choice: DtypeChoice, hf_dir: Path, infos: dict[str, Any]) -> torch.dtype:
    """bf16 / fp32 as asked; auto: the dtype config.json declares, else the dtype the weights were saved in."""
    if choice in _DTYPES:
        return _DTYPES[choice]
    if choice != "auto":
        raise UserError(f"--dtype {choice}: use auto, bf16 or fp32")
    config = json.loads((hf_dir / "config.json").read_text(encoding="utf-8"))
    declared = config.get("dtype") or config.get("torch_dtype")
    if declared in _CONFIG_DTYPES:
        return _CONFIG_DTYPES[declared]
    floats = [info.dtype for info in infos.values() if info.dtype.is_floating_point]
    return max(set(floats), key=floats.count) if floats else torch.float32


def _cast_info(info: Any, dtype: torch.dtype) -> int:
    return (info.nbytes // info.dtype.itemsize) * (
        dtype.itemsize if info.dtype.is_floating_point else info.dtype.itemsize
    )


def _split(names: list[str], sizes: dict[str, int], limit: int) -> dict[str, list[str]]:
    """Shards as `save_pretrained` makes them (huggingface_hub's greedy split in natural name order,
    a tensor bigger than the limit in a file of its own), sized by the bytes each tensor will have
    after the dtype cast, which only the plan knows: hence the factory over sizes, not tensors."""
    from huggingface_hub import split_state_dict_into_shards_factory

    split = split_state_dict_into_shards_factory(
        {name: sizes[name] for name in sorted(names, key=_natural_key)},
        get_storage_size=lambda size: size,
        filename_pattern="model{suffix}.safetensors",
        max_shard_size=limit,
    )
    return split.filename_to_tensors


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


# --------------------------------------------------------------------------- writing


def run_merge(plan: MergePlan, advance: Callable[[int], None] | None = None) -> MergeResult:
    """Write the planned folder into a temp folder beside the output, then rename it into place."""
    from safetensors.torch import save_file

    plan.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = plan.output.parent / f".tmp-{plan.output.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weight_map: dict[str, str] = {}
        family = family_of(json.loads((plan.hf_dir / "config.json").read_text(encoding="utf-8")))
        for filename, names in plan.shards.items():
            tensors = {}
            for name, tensor in plan.source.load(names).items():
                if tensor.is_floating_point():
                    tensor = tensor.to(plan.dtype)
                # the hub layout of MoE experts, which save_pretrained does not restore (models/hub_layout.py)
                tensors.update(hub_tensor(family, plan.renames[name], tensor.contiguous()))
                if advance is not None:
                    advance(tensor.numel() * tensor.element_size())
            save_file(tensors, str(tmp / filename), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(tensors, filename))
            del tensors
        if len(plan.shards) > 1:
            index = {
                "metadata": {"total_size": plan.total_bytes},
                "weight_map": dict(sorted(weight_map.items())),
            }
            (tmp / "model.safetensors.index.json").write_text(
                json.dumps(index, indent=2) + "\n", encoding="utf-8"
            )
        copy_hf_files(plan.hf_dir, tmp)
        _set_config_dtype(tmp / "config.json", plan.dtype)
        if plan.output.exists():
            stale = plan.output.parent / f".tmp-old-{plan.output.name}-{os.getpid()}"
            os.rename(plan.output, stale)
            shutil.rmtree(stale, ignore_errors=True)
        os.rename(tmp, plan.output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return MergeResult(
        output=plan.output,
        files=sorted(p.name for p in plan.output.iterdir()),
        num_tensors=len(plan.renames),
        total_bytes=plan.total_bytes,
        dtype=plan.dtype,
    )


def merge_checkpoint(
    checkpoint: Path,
    output: Path | None = None,
    dtype: DtypeChoice = "auto",
    max_shard_size: str | int = "5GB",
    overwrite: bool = False,
    force: bool = False,
) -> MergeResult:
    """`plan_merge` + `run_merge` without progress reporting."""
    return run_merge(plan_merge(checkpoint, output, dtype, max_shard_size, overwrite, force))


def _set_config_dtype(config_path: Path, dtype: torch.dtype) -> None:
    """Declare the written dtype wherever the config declares one (top level and sub-configs)."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    name = str(dtype).removeprefix("torch.")

    def update(section: dict[str, Any]) -> bool:
        found = False
        for key in ("dtype", "torch_dtype"):
            if key in section:
                section[key] = name
                found = True
        for value in section.values():
            if isinstance(value, dict):
                update(value)
        return found

    if not update(config):
        config["dtype"] = name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
