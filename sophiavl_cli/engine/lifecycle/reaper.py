"""A watchdog process that ends everything the trainer started when the trainer dies uncleanly.

`kill -9` of the trainer (an OOM killer, a scheduler, a user) runs no cleanup: the built-in
reward server (its own session, so a terminal's Ctrl-C does not reach it) kept its port and, with
a real reward model, its GPU; Ray's processes lingered. So the trainer starts this small process
first (`start_reaper`): it samples the trainer's process tree every second and, the moment
the trainer is gone, sends SIGTERM to every process it saw (and their children), then SIGKILL to
whatever is left a few seconds later. psutil identifies a process by pid *and* start time, so a
recycled pid is never hit. When the trainer ends normally it stops the reaper first (`stop()`),
after its own cleanup has run.

Usage (internal): python -m sophiavl_cli.engine.lifecycle.reaper TRAINER_PID
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

POLL_S = 1.0
TERM_GRACE_S = 5.0


class Reaper:
    """The running watchdog of this process; `stop()` ends it without it killing anything."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=10)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_reaper() -> Reaper:
    """Start the watchdog of this process (in its own session: a terminal's Ctrl-C does not stop it)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sophiavl_cli.engine.lifecycle.reaper", str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return Reaper(process)


def watch(pid: int, poll_s: float = POLL_S) -> list[psutil.Process]:
    """Sample `pid`'s descendants until it exits; then end them all. Returns the processes it ended."""
    try:
        parent = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return []
    me = os.getpid()
    seen: dict[int, psutil.Process] = {}
    while parent.is_running() and parent.status() != psutil.STATUS_ZOMBIE:
        with contextlib.suppress(psutil.Error):
            for child in parent.children(recursive=True):
                if child.pid != me:
                    seen.setdefault(child.pid, child)
        seen = {p: proc for p, proc in seen.items() if proc.is_running()}
        time.sleep(poll_s)
    return end_all(list(seen.values()))


def end_all(processes: list[psutil.Process], grace_s: float = TERM_GRACE_S) -> list[psutil.Process]:
    """SIGTERM these processes and their children, SIGKILL the ones still alive after `grace_s`."""
    doomed: dict[int, psutil.Process] = {}
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            if proc.is_running():
                doomed.setdefault(proc.pid, proc)
                for child in proc.children(recursive=True):
                    doomed.setdefault(child.pid, child)
    for proc in doomed.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(list(doomed.values()), timeout=grace_s)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace_s)
    return list(doomed.values())


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the trainer ended normally: nothing to do
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    watch(int(argv[0]))


if __name__ == "__main__":
    main(sys.argv[1:])
