"""How a run stops on request: Ctrl-C (SIGINT) or a scheduler's SIGTERM.

Schedulers (SLURM, Kubernetes) stop a job with SIGTERM and kill it a grace period later, so SIGTERM
is treated like the first Ctrl-C: the step in flight may finish for at most `trainer.stop_grace_s`
seconds, then the driver saves a checkpoint and exits 128 + the signal number (143 for SIGTERM,
130 for SIGINT). When the grace runs out first, or a second signal arrives, `Stopped` is raised in
the main thread (even inside a blocking Ray wait): the step is abandoned, nothing half-done is saved
and the newest checkpoint on disk is where `--resume auto` continues.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from sophiavl_cli.console import err_console

_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}


class Stopped(KeyboardInterrupt):
    """Stop now: raised by a second signal or when the grace period ends; `exit_code` is 128 + signal."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + signum
        self.message = message


class StopFlag:
    """A context manager that turns SIGINT and SIGTERM into `requested` (and `signum`) for the loop.

    The loop calls `step_done()` after each step: it ends the grace period, because the step has
    finished and only the checkpoint remains to be written.
    """

    def __init__(self, grace_s: float | None = None) -> None:
        self.grace_s = grace_s
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._armed = False
        self._raised: Stopped | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopFlag:
        self.install()
        return self

    def install(self) -> None:
        """Take SIGINT and SIGTERM (again: `ray.init` installs its own SIGTERM handler, which dumps and dies)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in ((signal.SIGINT, self._handle), (signal.SIGTERM, self._handle)):
            previous = signal.signal(signum, handler)
            self._previous.setdefault(signum, previous)
        self._previous.setdefault(signal.SIGALRM, signal.signal(signal.SIGALRM, self._grace_over))

    def _handle(self, signum: int, frame: Any) -> None:
        name = _NAMES.get(signum, f"signal {signum}")
        if self.signum is not None:
            self._raised = Stopped(signum, f"{name} again: stopped at once, the step in flight is not saved")
            raise self._raised
        self.signum = signum
        grace = ""
        if self.grace_s is not None and self.grace_s > 0 and self._previous:
            signal.setitimer(signal.ITIMER_REAL, self.grace_s)
            self._armed = True
            grace = f" (at most trainer.stop_grace_s={self.grace_s:g} s)"
        again = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        err_console.print(
            f"[yellow]{name}: finishing this step{grace}, then saving a checkpoint ({again} again to stop now)[/]"
        )

    def _grace_over(self, signum: int, frame: Any) -> None:
        self._armed = False
        assert self.signum is not None
        self._raised = Stopped(
            self.signum,
            f"the step in flight did not finish within trainer.stop_grace_s={self.grace_s:g} s; stopped without "
            "saving it (--resume auto continues from the newest checkpoint; raise trainer.stop_grace_s to wait longer)",
        )
        raise self._raised

    def step_done(self) -> None:
        """The step in flight has ended: the grace timer no longer applies (the save follows)."""
        if self._armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            self._armed = False

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        self.step_done()
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Stopped) and self._raised is not None:
            # Ray's blocking calls turn the handler's exception into a bare KeyboardInterrupt; give
            # back ours, with its message and exit code (143 for SIGTERM).
            raise self._raised from None
