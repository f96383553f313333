"""The disk under a run: the space an earlier run's unfinished save holds is taken back at start,
and a disk that fills up mid-run is one line naming the run folder, what is free and what the run
needs (a checkpoint of it), instead of a traceback from whichever write hit it (`workers.json`,
metrics, a checkpoint). Writes are atomic (`fileio`), so what was on disk before stays intact.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from sophiavl_cli.engine.checkpoint.layout import checkpoints_dir
from sophiavl_cli.engine.checkpoint.store import CheckpointManager, tree_size
from sophiavl_cli.engine.lifecycle.machine_checks import size_text
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import is_disk_full


class DiskFull(UserError):
    """The disk of the run folder filled up; the message says how much a checkpoint needs."""


def reclaim_stale_saves(run_dir: Path, say: Callable[[str], None]) -> None:
    """Remove what a killed save left in `run_dir/checkpoints` (`.tmp-*`), saying what and how much."""
    removed = CheckpointManager(checkpoints_dir(run_dir)).remove_stale_temps()
    if removed:
        names = ", ".join(name for name, _ in removed)
        total = size_text(sum(size for _, size in removed))
        say(f"removed what an interrupted save left in {checkpoints_dir(run_dir)} ({names}; {total})")


def one_checkpoint(run_dir: Path, estimate: Callable[[], int | None]) -> tuple[int, str] | None:
    """About how much one checkpoint of this run takes, and how that was found: the newest one on
    disk, else `estimate()` (fp32 weights with AdamW state, `machine_checks.recipe_checkpoint_bytes`)."""
    newest = CheckpointManager(checkpoints_dir(run_dir)).find_latest()
    if newest is not None:
        return tree_size(newest), f"the size of {newest.name}"
    try:
        size = estimate()
    except Exception:  # the message must come out whatever else is wrong
        return None
    return (size, "fp32 weights and AdamW state") if size else None


@contextmanager
def disk_full_said(run_dir: Path, estimate: Callable[[], int | None]) -> Iterator[None]:
    """Turn a full disk inside the block into one `DiskFull` line (`estimate` is asked only then)."""
    try:
        yield
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise DiskFull(disk_full_message(run_dir, exc, estimate)) from None


def disk_full_message(run_dir: Path, exc: OSError, estimate: Callable[[], int | None]) -> str:
    existing = Path(run_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    free = shutil.disk_usage(existing).free
    writing = f" writing {Path(exc.filename).name}" if exc.filename else ""
    need = one_checkpoint(Path(run_dir), estimate)
    what = f"; a checkpoint of this run needs about {size_text(need[0])} ({need[1]})" if need else ""
    return (
        f"{run_dir}: no space left on its disk{writing} ({size_text(free)} free){what}; free space there or set "
        "trainer.output_dir to a bigger disk, then run the same command again (--resume auto continues)"
    )
