"""One trainer per run folder: an exclusive lock on `<run_dir>/.lock`, released when the process ends.

Two `sophiavl train` on the same run folder used to both run to the end, interleaving metrics and
checkpoints. The lock is an OS file lock (`fcntl.flock`, which also works on NFSv4 and Lustre), so
a killed trainer never leaves a stale lock behind; the file holds who took it (pid, host, time)
for the message the second trainer prints.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from sophiavl_cli.errors import UserError

LOCK_FILE = ".lock"


class RunLock:
    """Held while the context is open (or until `release()`); `acquire` raises when someone else holds it."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(os.read(fd, 4096))
            os.close(fd)
            raise UserError(
                f"{self.path.parent}: another trainer is using this run folder ({holder}); wait for it to end, "
                "stop it, or pick another trainer.experiment_name"
            ) from None
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(owner) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the lock; the file stays (removing it would race a waiter)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(raw: bytes) -> str:
    try:
        owner = json.loads(raw.decode("utf-8"))
        return f"pid {owner['pid']} on {owner['host']}, since {owner['since']}"
    except (ValueError, KeyError, TypeError):
        return "its owner did not record itself"
