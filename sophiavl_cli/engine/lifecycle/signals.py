"""How a run stops on request: Ctrl-C (SIGINT) or a scheduler's SIGTERM.

Schedulers (SLURM, Kubernetes) stop a job with SIGTERM and kill it a grace period later, so SIGTERM
is treated like the first Ctrl-C: the step in flight may finish for at most `trainer.stop_grace_s`
seconds, then the driver saves a checkpoint and exits 128 + the signal number (143 for SIGTERM,
130 for SIGINT). When the grace runs out first, or a second signal arrives, `Stopped` is raised in
the main thread (even inside a blocking Ray wait): the step is abandoned, nothing half-done is saved
and the newest checkpoint on disk is where `--resume auto` continues.

While a run is still starting (pre-flight, Ray, the workers loading the model) there is no step to
finish: a flag made with `starting=True` stops at once on the first signal, with the same exit code
and a line, until `ready()` says the first step may begin. `ray.init` installs its own SIGTERM
handler (a bare `sys.exit(15)`, silent); `take_back()` right after it returns hands SIGTERM back to
the active flag, and a SIGTERM that lands inside `ray.init` (Ray's `SystemExit(15)`) is turned into
the same `Stopped` when the flag exits.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from sophiavl_cli.console import err_console

_NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
_active: list[StopFlag] = []  # the flags installed, innermost last (`take_back` reinstalls it)


def take_back() -> None:
    """Give SIGINT / SIGTERM back to the innermost active flag (after `ray.init` took SIGTERM)."""
    if _active:
        _active[-1].install()


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

    def __init__(self, grace_s: float | None = None, *, starting: bool = False) -> None:
        self.grace_s = grace_s
        self.starting = starting  # no step yet: a signal stops at once (see the module docstring)
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._armed = False
        self._raised: Stopped | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopFlag:
        self.install()
        _active.append(self)
        return self

    def ready(self) -> None:
        """The run has started: from now on a first signal lets the step in flight finish and save."""
        self.starting = False
        self.install()  # again: ray.init took SIGTERM for itself

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
        if self.starting:
            self.signum = signum
            self._raised = Stopped(signum, _while_starting(name))
            raise self._raised
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
        if not self._armed or self.signum is None:  # not our timer (a test runner's, a library's)
            previous = self._previous.get(signal.SIGALRM)
            if callable(previous):
                previous(signum, frame)
            return
        self._armed = False
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
        if self in _active:
            _active.remove(self)
        if isinstance(exc, SystemExit) and exc.code == signal.SIGTERM and _raised_by_ray(exc):
            # Ray's own handler (installed by ray.init, before `take_back`) exits silently with 15.
            self._raised = Stopped(signal.SIGTERM, _while_starting("SIGTERM"))
            raise self._raised from None
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Stopped) and self._raised is not None:
            # Ray's blocking calls turn the handler's exception into a bare KeyboardInterrupt; give
            # back ours, with its message and exit code (143 for SIGTERM).
            raise self._raised from None


def _while_starting(name: str) -> str:
    return (
        f"{name} while the run was starting: stopped before its first step, nothing to save "
        "(--resume auto continues from the newest checkpoint, if any)"
    )


def _raised_by_ray(exc: BaseException) -> bool:
    """Whether `exc` came out of the SIGTERM handler `ray.init` installs (`sys.exit(signum)`)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code if tb is not None else None
    return code is not None and code.co_name == "sigterm_handler" and "ray" in code.co_filename
