"""Child server processes: start in their own process group, stop the whole group.

vLLM's server forks engine-core and worker processes; signalling only the parent can leave them
holding the GPU. So each server child gets a new session (its own group), and stopping sends
SIGTERM to the group, waits, then SIGKILLs whatever is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO


def spawn(
    command: Sequence[str], *, env: Mapping[str, str], log: IO[bytes] | None
) -> subprocess.Popen[bytes]:
    """Start `command` in a new session; stdout and stderr go to `log` (or are inherited when None)."""
    return subprocess.Popen(
        list(command),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )


def stop_group(process: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    """SIGTERM the child's process group, wait up to `grace` seconds, then SIGKILL it; the exit code."""
    if process.poll() is None:
        _signal_group(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(process, signal.SIGKILL)
            process.wait()
    else:  # the leader is gone; make sure its children are too
        _signal_group(process, signal.SIGKILL)
    return process.returncode


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # already gone
        os.killpg(process.pid, sig)


def log_tail(path: Path, lines: int = 15, *, start: int = 0) -> str:
    """The last `lines` lines of a child's log from byte `start` on, for error messages."""
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return "(no log)"
    tail = [line for line in text.splitlines() if line.strip()][-lines:]
    return "\n".join(tail) if tail else "(empty log)"
