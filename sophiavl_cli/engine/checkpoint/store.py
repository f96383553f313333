"""Checkpoints that survive a kill at any moment and resume bit-exactly, at any world size.

Layout of one checkpoint (`<run_dir>/checkpoints/global_step_N/`, see docs/checkpoints.md):

    dcp/                      model + optimizer, sharded, torch.distributed.checkpoint (DCP) format
                              (LoRA runs: the trainable adapter and its optimizer state only)
    extra_state_rank_R.pt     per-rank RNG states (and whatever else a rank adds)
    driver_state.json         step, data-loader / trainer / scheduler state (plain JSON)
    huggingface/              config, tokenizer, processor, chat template, generation config
    recipe.yaml               the resolved recipe (secrets are never recipe fields)
    complete                  marker: written last, before the folder gets its final name; lists
                              every other file with its size and xxh3 checksum (`verify_checkpoint`)

Atomicity: the driver asks `CheckpointManager.begin(step)` for an empty `.tmp-global_step_N-<pid>`
folder, every rank writes its shards there (`save_sharded`, `save_rank_extras`), then
`CheckpointManager.commit` adds the driver's files and the marker, fsyncs, renames the folder to
`global_step_N` and only then rewrites the `latest` pointer (temp file + os.replace). A kill before
the rename leaves a `.tmp-*` folder that every reader ignores; a kill after it leaves a complete
checkpoint that `latest` may not name yet, which is still a valid checkpoint.

Worker side (`save_sharded` / `load_sharded`) runs on every rank inside the Ray actors and is
collective; the driver side (`CheckpointManager`, `resolve_resume`) only touches files. DCP saves
each rank's shards with their global offsets, so a checkpoint written by W ranks loads on any
other number of ranks (or on one process without a process group).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import xxhash
from torch import nn
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_path, atomic_write_text, fsync_dir, fsync_tree

CHECKPOINTS_DIRNAME = "checkpoints"
DCP_DIRNAME = "dcp"
HF_DIRNAME = "huggingface"
DRIVER_STATE_FILE = "driver_state.json"
RECIPE_FILE = "recipe.yaml"
COMPLETE_MARKER = "complete"
LATEST_POINTER = "latest"
STEP_DIR_RE = re.compile(r"^global_step_(\d+)$")
FORMAT_VERSION = 1
MARKER_FORMAT = 2  # 1: the marker was one line naming the step (no file list; still accepted)
_HASH_CHUNK = 8 * 1024**2

# Files of a Hugging Face folder that are not weights: everything else is copied into `huggingface/`.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx")
_WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


# --------------------------------------------------------------------------- worker side (collective)


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


# --------------------------------------------------------------------------- driver side (files only)


def checkpoints_dir(run_dir: Path) -> Path:
    """Where a run keeps its checkpoints."""
    return Path(run_dir) / CHECKPOINTS_DIRNAME


def step_of(path: Path) -> int | None:
    """N for a `global_step_N` folder name, else None."""
    match = STEP_DIR_RE.match(Path(path).name)
    return int(match.group(1)) if match else None


def is_complete(path: Path) -> bool:
    """A committed checkpoint: final name, marker, driver state and DCP metadata all present."""
    path = Path(path)
    return (
        step_of(path) is not None
        and (path / COMPLETE_MARKER).is_file()
        and (path / DRIVER_STATE_FILE).is_file()
        and (path / DCP_DIRNAME / ".metadata").is_file()
    )


class CheckpointManager:
    """Driver-side bookkeeping of `global_step_N` folders: temp folders, commit, `latest`, pruning.

    Usage on the driver (workers write between `begin` and `commit`; the folder must be on a file
    system every worker can write, e.g. shared storage on multi-node runs):

        tmp = manager.begin(step)
        ray.get([w.save_checkpoint.remote(tmp) for w in workers])   # save_sharded + save_rank_extras
        manager.commit(tmp, step, driver_state, hf_source_dir, recipe_yaml)
    """

    def __init__(self, checkpoints_dir: Path, save_limit: int = -1) -> None:
        self.root = Path(checkpoints_dir)
        self.save_limit = save_limit

    # ---- writing

    def begin(self, step: int) -> Path:
        """Create and return an empty temporary folder for step `step`, removing stale `.tmp-*` leftovers."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temps()
        tmp = self.root / f".tmp-global_step_{step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp

    def commit(
        self,
        tmp_dir: Path,
        step: int,
        driver_state: dict[str, Any],
        hf_source_dir: Path | None = None,
        recipe_yaml: str | None = None,
    ) -> Path:
        """Finish the checkpoint the workers wrote into `tmp_dir` and publish it as `global_step_{step}`.

        Order matters for crash safety: driver files, HF files and the `complete` marker are written
        and fsynced inside the temp folder, the folder is renamed (atomic), `latest` is rewritten
        (atomic) and only then are old checkpoints pruned. `driver_state` must be JSON-serialisable;
        it is stored with `step`, `format` and `saved_at` added.
        """
        tmp_dir = Path(tmp_dir)
        if tmp_dir.parent.resolve() != self.root.resolve() or not tmp_dir.is_dir():
            raise ValueError(
                f"{tmp_dir} is not a temporary folder from CheckpointManager.begin() in {self.root}"
            )
        if not (tmp_dir / DCP_DIRNAME / ".metadata").is_file():
            raise RuntimeError(
                f"{tmp_dir}: the workers did not finish saving (no {DCP_DIRNAME}/.metadata); not committing"
            )
        if "step" in driver_state and driver_state["step"] != step:
            raise ValueError(f"driver_state['step'] = {driver_state['step']} but committing step {step}")
        state = {**driver_state, "format": FORMAT_VERSION, "step": step, "saved_at": time.time()}
        _write_text(tmp_dir / DRIVER_STATE_FILE, json.dumps(state, indent=2, allow_nan=False) + "\n")
        if hf_source_dir is not None:
            copy_hf_files(Path(hf_source_dir), tmp_dir / HF_DIRNAME)
        if recipe_yaml is not None:
            _write_text(tmp_dir / RECIPE_FILE, recipe_yaml)
        marker = {"format": MARKER_FORMAT, "step": step, "files": file_manifest(tmp_dir)}
        _write_text(tmp_dir / COMPLETE_MARKER, json.dumps(marker, indent=1) + "\n")
        fsync_tree(tmp_dir)

        final = self.root / f"global_step_{step}"
        if final.exists():  # a step redone after resuming from an older checkpoint: replace it
            _remove_tree_atomically(final)
        os.rename(tmp_dir, final)
        fsync_dir(self.root)
        self._write_latest(final.name)
        self.prune(keep=final)
        return final

    def _write_latest(self, name: str) -> None:
        atomic_write_text(self.root / LATEST_POINTER, name + "\n")

    def prune(self, keep: Path | None = None) -> list[Path]:
        """Delete the oldest complete checkpoints beyond `save_limit` (<= 0 keeps all); never `keep`."""
        if self.save_limit <= 0:
            return []
        others = [p for p in self.complete_checkpoints() if keep is None or p.name != Path(keep).name]
        budget = self.save_limit - (1 if keep is not None else 0)
        doomed = others[: max(len(others) - budget, 0)]
        for path in doomed:
            _remove_tree_atomically(path)
        return doomed

    def _remove_stale_temps(self) -> None:
        """Leftovers of a killed save (or prune) by an earlier process; readers ignore them anyway."""
        for path in self.root.glob(".tmp-*"):
            if path.name.endswith(f"-{os.getpid()}"):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    # ---- reading

    def complete_checkpoints(self) -> list[Path]:
        """Complete `global_step_N` folders, oldest step first (`.tmp-*` and unmarked folders ignored)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and is_complete(p)]
        return sorted(found, key=lambda p: step_of(p) or 0)

    def find_latest(self) -> Path | None:
        """The checkpoint `latest` names if it is complete, else the highest complete step, else None."""
        pointer = self.root / LATEST_POINTER
        if pointer.is_file():
            named = self.root / pointer.read_text(encoding="utf-8").strip()
            if named.parent == self.root and is_complete(named):
                return named
        complete = self.complete_checkpoints()
        return complete[-1] if complete else None

    @staticmethod
    def load_driver_state(path: Path) -> dict[str, Any]:
        """The JSON the driver stored with `commit` (with `step`, `format`, `saved_at`)."""
        file = Path(path) / DRIVER_STATE_FILE
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise UserError(f"{file}: missing; {path} is not a complete sophiavl checkpoint") from None
        except json.JSONDecodeError as exc:
            raise UserError(f"{file}: not valid JSON ({exc}); resume from an older checkpoint") from None


def resolve_resume(arg: str, run_dir: Path, say: Callable[[str], None] | None = None) -> Path | None:
    """Turn `--resume auto|none|PATH` into an intact checkpoint folder (or None: start fresh).

    auto: the newest complete checkpoint of `run_dir` whose files match its marker, None when there
    is none; each newer one that fails verification is skipped with a line to `say` naming the file.
    PATH may name a `global_step_N` folder, a checkpoints folder or a run folder (its latest
    complete checkpoint); a PATH that fails verification is a `UserError` naming the file.
    """
    if arg == "none":
        return None
    if arg == "auto":
        manager = CheckpointManager(checkpoints_dir(run_dir))
        latest = manager.find_latest()
        candidates = [p for p in reversed(manager.complete_checkpoints()) if p != latest]
        for path in ([latest] if latest is not None else []) + candidates:
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            if say is not None:
                say(f"skipping checkpoint {path.name}: {problem}")
        return None
    chosen = _resolve_path(arg)
    problem = verify_checkpoint(chosen)
    if problem is not None:
        raise UserError(f"--resume {arg}: {problem}; pass an older global_step_N or --resume auto")
    return chosen


def _resolve_path(arg: str) -> Path:
    path = Path(arg).expanduser()
    if not path.exists():
        raise UserError(
            f"--resume {arg}: no such folder; pass a global_step_N folder, a run folder, auto or none"
        )
    if step_of(path) is not None:
        if not is_complete(path):
            raise UserError(
                f"--resume {arg}: this checkpoint is incomplete (interrupted save); pick an older global_step_N"
            )
        return path
    for root in (path, checkpoints_dir(path)):
        latest = CheckpointManager(root).find_latest()
        if latest is not None:
            return latest
    raise UserError(
        f"--resume {arg}: no complete global_step_N checkpoint in this folder; pass --resume none to start over"
    )


# --------------------------------------------------------------------------- integrity


def file_checksum(path: Path) -> str:
    """xxh3-64 of a file's bytes (several GB/s: a 7B checkpoint with optimizer state reads in seconds per GB)."""
    digest = xxhash.xxh3_64()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_manifest(root: Path) -> dict[str, dict[str, Any]]:
    """{relative path: {"size", "xxh3"}} of every file under `root` except the marker, hashed in parallel."""
    root = Path(root)
    files = sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name != COMPLETE_MARKER
    )
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sums = list(pool.map(lambda rel: file_checksum(root / rel), files))
    return {
        rel: {"size": (root / rel).stat().st_size, "xxh3": digest}
        for rel, digest in zip(files, sums, strict=True)
    }


def verify_checkpoint(path: Path) -> str | None:
    """None when every file the marker lists is there with its size and checksum; else why not, in one line.

    A checkpoint without a marker is incomplete; one whose marker predates file lists (format 1)
    is accepted as it is (there is nothing to check it against).
    """
    path = Path(path)
    marker = path / COMPLETE_MARKER
    if not marker.is_file():
        return f"{marker}: missing (the save was interrupted), so the checkpoint is incomplete"
    try:
        listed = json.loads(marker.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # a format-1 marker: one line naming the step
    if not isinstance(listed, dict) or not isinstance(listed.get("files"), dict):
        return f"{marker}: not a checkpoint marker this version understands"
    entries = sorted(listed["files"].items())
    for rel, entry in entries:  # sizes first: cheap, and they catch truncation without reading anything
        file = path / rel
        if not file.is_file():
            return f"{file}: missing"
        size = file.stat().st_size
        if size != entry["size"]:
            return f"{file}: {size} bytes, {entry['size']} when saved (truncated or replaced)"
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        sums = list(pool.map(lambda item: file_checksum(path / item[0]), entries))
    for (rel, entry), digest in zip(entries, sums, strict=True):
        if digest != entry["xxh3"]:
            return f"{path / rel}: checksum differs from the one saved (the file is corrupt)"
    return None


# --------------------------------------------------------------------------- files


def copy_hf_files(source: Path, dest: Path) -> list[Path]:
    """Copy config / tokenizer / processor / chat template / generation config files (not weights)."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for file in sorted(source.iterdir()):
        skip = (
            file.name.startswith(".") or file.name.endswith(_WEIGHT_SUFFIXES) or file.name in _WEIGHT_INDEXES
        )
        if skip or not file.is_file():
            continue
        shutil.copy2(file, dest / file.name)
        copied.append(dest / file.name)
    return copied


def _write_text(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _remove_tree_atomically(path: Path) -> None:
    """Rename first, then delete: a kill mid-delete never leaves a half-deleted folder under its final name."""
    doomed = path.with_name(f".tmp-delete-{path.name}-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)
