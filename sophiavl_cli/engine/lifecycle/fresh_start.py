"""A run that starts over never mixes with, cuts or prunes the run already in its folder.

`--resume none` (or `--resume auto` with no intact checkpoint left) used to start in a folder that
still held an earlier run: its checkpoints were pruned by the new run's `save_limit`, an old step
was overwritten by the new run's, checkpoints of two seeds sat side by side and `metrics.jsonl` was
cut. Now the earlier run is moved aside first, whole, to a sibling folder whose name says when
(`<experiment>.before-YYYYmmdd-HHMMSS`), and the new run starts in an empty folder. Nothing is
deleted; the line printed names where the earlier run went.

Only a folder with something a step leaves (a checkpoint, logged metrics or generations, dumped
rollouts) holds a run; what a failed start leaves (the lock, `workers.json`) is simply reused.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from sophiavl_cli.engine.checkpoint.layout import CHECKPOINTS_DIRNAME
from sophiavl_cli.engine.lifecycle.runlock import RunLock

# What only a run that took steps leaves behind (engine/observe/loggers.py, engine/step.py).
_STEP_TRACES = ("metrics.jsonl", "generations.jsonl")
_STEP_FOLDERS = (CHECKPOINTS_DIRNAME, "rollouts")


def holds_a_run(run_dir: Path) -> bool:
    """Whether `run_dir` holds what a run that took steps leaves (see the module docstring)."""
    for name in _STEP_TRACES:
        file = run_dir / name
        if file.is_file() and file.stat().st_size > 0:
            return True
    return any((run_dir / name).is_dir() and any((run_dir / name).iterdir()) for name in _STEP_FOLDERS)


def aside_name(run_dir: Path, now: float | None = None) -> Path:
    """`<run_dir>.before-YYYYmmdd-HHMMSS` (local time), with `-2`, `-3`... if that exists already."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    candidate = run_dir.with_name(f"{run_dir.name}.before-{stamp}")
    number = 2
    while candidate.exists():
        candidate = run_dir.with_name(f"{run_dir.name}.before-{stamp}-{number}")
        number += 1
    return candidate


def set_aside(run_dir: Path, lock: RunLock) -> tuple[Path | None, RunLock]:
    """Move the run in `run_dir` (held by `lock`) aside when there is one; returns where it went
    (None: nothing to keep) and the lock now held, on the new, empty `run_dir`.

    The old lock is held until the new one is taken, so no other trainer can slip into either.
    """
    if not holds_a_run(run_dir):
        return None, lock
    aside = aside_name(run_dir)
    os.rename(run_dir, aside)  # the whole folder, in one step; the held lock file goes with it
    try:
        fresh = RunLock(run_dir).acquire()
    finally:
        lock.release()
    return aside, fresh
