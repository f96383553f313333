"""The disk under a run: the space an earlier run's unfinished save holds is taken back at start,
and a disk that fills up mid-run is one line naming the run folder, what is free and what the run
needs (a checkpoint of it), instead of a traceback from whichever write hit it (`workers.json`,
metrics, a checkpoint). Writes are atomic (`fileio`), so what was on disk before stays intact.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sophiavl_cli.engine.checkpoint.layout import checkpoints_dir
from sophiavl_cli.engine.checkpoint.store import CheckpointManager, tree_size
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import is_disk_full

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_BYTES_PER_PARAM = {"float32": 4, "float16": 2, "bfloat16": 2}
# A full fine-tuning checkpoint: fp32 weights and AdamW's two fp32 moments.
_CHECKPOINT_BYTES_PER_PARAM = 12


class DiskFull(UserError):
    """The disk of the run folder filled up; the message says how much a checkpoint needs."""


def reclaim_stale_saves(run_dir: Path, say: Callable[[str], None]) -> None:
    """Remove what a killed save left in `run_dir/checkpoints` (`.tmp-*`), saying what and how much."""
    removed = CheckpointManager(checkpoints_dir(run_dir)).remove_stale_temps()
    if removed:
        names = ", ".join(name for name, _ in removed)
        say(
            f"removed what an interrupted save left in {checkpoints_dir(run_dir)} ({names}; {human(sum(b for _, b in removed))})"
        )


def checkpoint_bytes(run_dir: Path, model_dir: Path | None) -> tuple[int, str] | None:
    """About how much one checkpoint of this run takes, and how that was found: the newest one on
    disk, else the model's weights as fp32 with AdamW's two moments."""
    newest = CheckpointManager(checkpoints_dir(run_dir)).find_latest()
    if newest is not None:
        return tree_size(newest), f"the size of {newest.name}"
    if model_dir is None or not Path(model_dir).is_dir():
        return None
    weights = sum(p.stat().st_size for p in Path(model_dir).iterdir() if p.name.endswith(_WEIGHT_SUFFIXES))
    if not weights:
        return None
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    except (OSError, ValueError):
        dtype = "bfloat16"
    params = weights // _BYTES_PER_PARAM.get(dtype, 2)
    return params * _CHECKPOINT_BYTES_PER_PARAM, "the model's weights with AdamW state, in fp32"


@contextmanager
def disk_full_said(run_dir: Path, model_dir: Callable[[], Path | None]) -> Iterator[None]:
    """Turn a full disk inside the block into one `DiskFull` line (`model_dir` is asked only then)."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFull(disk_full_message(run_dir, exc, model_dir)) from None


def disk_full_message(run_dir: Path, exc: OSError, model_dir: Callable[[], Path | None]) -> str:
    existing = Path(run_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    writing = f" writing {Path(exc.filename).name}" if exc.filename else ""
    try:
        folder = model_dir()
    except Exception:  # the message must come out whatever else is wrong
        folder = None
    need = checkpoint_bytes(Path(run_dir), folder)
    what = f"; a checkpoint of this run needs about {human(need[0])} ({need[1]})" if need else ""
    return (
        f"{run_dir}: no space left on its disk{writing} ({human(free)} free){what}; free space there or set "
        "trainer.output_dir to a bigger disk, then run the same command again (--resume auto continues)"
    )


def human(size: int) -> str:
    """Bytes as a short size: 512 B, 3.4 MB, 12.0 GB (decimal units, as `df -H`)."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
