"""The rank side of a checkpoint: DCP shards of model and optimizer, and per-rank extra state.

Runs on every rank inside the Ray actors and is collective. DCP saves each rank's shards with their
global offsets, so a checkpoint written by W ranks loads on any other number of ranks (or on one
process without a process group). The driver side, which only touches files, is `store.py`.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from sophiavl_cli.engine.checkpoint.layout import DCP_DIRNAME, FORMAT_VERSION
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_path


def save_sharded(
    step_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, trainable_only: bool = False
) -> None:
    """Write this rank's shards of the model and optimizer into `step_dir/dcp` (collective: all ranks call it).

    `get_state_dict` gives FSDP2 DTensor shards keyed by the module's parameter names (no FSDP
    wrapper prefixes); DCP stores them under `model.<name>` and `optimizer.state.<name>.<slot>`,
    the names `sophiavl merge` reads back. Works without a process group too (one process).
    `trainable_only` (LoRA runs) leaves the frozen parameters out: the frozen base is rebuilt from
    `worker.actor.model_path` on resume, so a checkpoint holds the adapter and its AdamW state.
    """
    options = StateDictOptions(ignore_frozen_params=trainable_only)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    with single_process_ok():
        dcp.save(
            {"model": model_state, "optimizer": optim_state},
            checkpoint_id=Path(step_dir) / DCP_DIRNAME,
            no_dist=not _distributed(),
        )


def load_sharded(
    step_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, *, trainable_only: bool = False
) -> None:
    """Load model and optimizer from `step_dir/dcp` into this rank's shards, in place (collective).

    The model must already be wrapped the way it was at save time (same parameter names), at any
    world size: DCP reads each rank's slice from whatever shards were written. A fresh optimizer
    (no state yet) is fine: `get_state_dict` initialises its state before it is overwritten.
    `trainable_only` loads the trainable parameters alone and keeps the frozen ones as built
    (from an adapter-only LoRA checkpoint, or from the adapters of an older full one).
    """
    dcp_dir = Path(step_dir) / DCP_DIRNAME
    if not (dcp_dir / ".metadata").is_file():
        raise UserError(
            f"{dcp_dir}: no DCP checkpoint here (.metadata missing); pick a complete global_step_N folder"
        )
    options = StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only)
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    saved = FileSystemReader(str(dcp_dir)).read_metadata().state_dict_metadata
    missing = [name for name in model_state if f"model.{name}" not in saved]
    if missing:
        raise UserError(
            f"{dcp_dir}: the checkpoint lacks {len(missing)} of this model's tensors (e.g. {', '.join(missing[:3])}); "
            "it was saved with another worker.actor.lora setting (a LoRA checkpoint holds only the adapter) "
            "or another model: resume with the recipe it was saved with"
        )
    state = {"model": model_state, "optimizer": optim_state}
    with single_process_ok():
        dcp.load(state, checkpoint_id=dcp_dir, no_dist=not _distributed())
    set_state_dict(
        model,
        optimizer,
        model_state_dict=state["model"],
        optim_state_dict=state["optimizer"],
        options=options,
    )


@contextmanager
def single_process_ok() -> Iterator[None]:
    """Silence DCP's "assuming the intent is to ... in a single process" warning: here it is the intent."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is (disabled|unavailable)")
        yield


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _world_size() -> int:
    return dist.get_world_size() if _distributed() else 1


def extras_path(step_dir: Path, rank: int) -> Path:
    return Path(step_dir) / f"extra_state_rank_{rank}.pt"


def save_rank_extras(
    step_dir: Path, rank: int, extras: dict[str, Any], world_size: int | None = None
) -> None:
    """Save one rank's small state (e.g. `{"rng": capture_rng()}`) as `extra_state_rank_{rank}.pt`.

    Values must be tensors, numbers, strings, None, or lists/tuples/dicts of them: the file is read
    back with `torch.load(weights_only=True)`. `world_size` defaults to the process group's.
    """
    payload = {
        "format": FORMAT_VERSION,
        "rank": rank,
        "world_size": world_size or _world_size(),
        "extras": extras,
    }
    with atomic_path(extras_path(step_dir, rank)) as tmp:
        torch.save(payload, tmp)


def load_rank_extras(step_dir: Path, rank: int, world_size: int | None = None) -> dict[str, Any] | None:
    """This rank's extras, or None when the checkpoint was written at another world size.

    Per-rank RNG streams only make sense for the same rank layout: at another world size the caller
    re-derives its RNG from the recipe seeds (seed + step + rank), so the run continues
    deterministically but not bit-identically to an uninterrupted one.
    """
    world_size = world_size or _world_size()
    saved = sorted(Path(step_dir).glob("extra_state_rank_*.pt"))
    path = extras_path(step_dir, rank)
    if len(saved) != world_size or not path.is_file():
        return None
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("world_size") != world_size or payload.get("rank") != rank:
        return None
    return payload["extras"]
