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

This module is the driver side (`CheckpointManager`, `resolve_resume`): it only touches files.
The rank side (`save_sharded`, `save_rank_extras`, collective) is `sharded.py`, file names are
`layout.py`, and the marker's checksums `integrity.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sophiavl_cli.engine.checkpoint.integrity import file_manifest, verify_checkpoint
from sophiavl_cli.engine.checkpoint.layout import (
    COMPLETE_MARKER,
    DCP_DIRNAME,
    DRIVER_STATE_FILE,
    FORMAT_VERSION,
    HF_DIRNAME,
    LATEST_POINTER,
    MARKER_FORMAT,
    RECIPE_FILE,
    checkpoints_dir,
    copy_hf_files,
    is_complete,
    step_of,
)
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_write_text, fsync_dir, fsync_tree


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
        self.remove_stale_temps()
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

    def remove_stale_temps(self) -> list[tuple[str, int]]:
        """Remove the leftovers of a killed save (or prune) by an earlier process (readers ignore them,
        but they hold disk space); returns (name, bytes) of each. Run at start and before each save."""
        removed = []
        for path in sorted(self.root.glob(".tmp-*")) if self.root.is_dir() else []:
            if path.name.endswith(f"-{os.getpid()}"):
                continue
            size = tree_size(path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append((path.name, size))
        return removed

    # ---- reading

    def complete_checkpoints(self) -> list[Path]:
        """Complete `global_step_N` folders, oldest step first (`.tmp-*` and unmarked folders ignored)."""
        if not self.root.is_dir():
            return []
        found = [p for p in self.root.iterdir() if p.is_dir() and is_complete(p)]
        return sorted(found, key=lambda p: step_of(p) or 0)

    def incomplete_checkpoints(self) -> list[Path]:
        """`global_step_N` folders (final names) that are not complete: their `complete` marker (or
        driver state, or DCP metadata) is gone; oldest step first."""
        if not self.root.is_dir():
            return []
        found = [
            p for p in self.root.iterdir() if p.is_dir() and step_of(p) is not None and not is_complete(p)
        ]
        return sorted(found, key=lambda p: step_of(p) or 0)

    def find_latest(self, say: Callable[[str], None] | None = None) -> Path | None:
        """The checkpoint `latest` names if it is complete, else the highest complete step, else None.

        With `say`, every surprise on the way is one line naming the file and what is taken instead:
        a `latest` that is not a checkpoint name (not UTF-8 text, say) or names an incomplete
        checkpoint, and each newer `global_step_N` passed over because it is incomplete.
        """
        complete = self.complete_checkpoints()
        chosen = complete[-1] if complete else None
        instead = f"taking {chosen.name} instead" if chosen is not None else "no complete checkpoint is left"
        pointer = self.root / LATEST_POINTER
        if pointer.is_file():
            try:
                named: Path | None = self.root / pointer.read_bytes().decode("utf-8").strip()
            except UnicodeDecodeError:
                named = None
                if say is not None:
                    say(f"{pointer}: not a checkpoint name (its bytes are not UTF-8 text); {instead}")
            if named is not None and named.parent == self.root and is_complete(named):
                return named
            if named is not None and say is not None and not (named.parent == self.root and named.is_dir()):
                say(f"{pointer} names {named.name!r}, which is not a checkpoint folder here; {instead}")
        if say is not None:
            newest = step_of(chosen) if chosen is not None else None
            for path in self.incomplete_checkpoints():
                if newest is None or (step_of(path) or 0) > newest:
                    say(f"{path}: {missing_part(path)}, so the checkpoint is incomplete; {instead}")
        return chosen

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
        latest = manager.find_latest(say)
        candidates = [p for p in reversed(manager.complete_checkpoints()) if p != latest]
        for path in ([latest] if latest is not None else []) + candidates:
            problem = verify_checkpoint(path)
            if problem is None:
                return path
            if say is not None:
                say(f"skipping checkpoint {path.name}: {problem}")
        return None
    chosen = _resolve_path(arg, say)
    problem = verify_checkpoint(chosen)
    if problem is not None:
        raise UserError(f"--resume {arg}: {problem}; pass an older global_step_N or --resume auto")
    return chosen


def _resolve_path(arg: str, say: Callable[[str], None] | None = None) -> Path:
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
        latest = CheckpointManager(root).find_latest(say)
        if latest is not None:
            return latest
    raise UserError(
        f"--resume {arg}: no complete global_step_N checkpoint in this folder; pass --resume none to start over"
    )


def missing_part(path: Path) -> str:
    """What makes a `global_step_N` folder incomplete, in words."""
    for name in (COMPLETE_MARKER, DRIVER_STATE_FILE, f"{DCP_DIRNAME}/.metadata"):
        if not (path / name).is_file():
            return f"its `{name}` is missing"
    return "it is not a complete checkpoint"


def tree_size(path: Path) -> int:
    """Bytes of the files under `path` (a file: its size)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


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
