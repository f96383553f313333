"""A time limit for pure-Python calls that works in any thread.

Why not `signal.alarm` (math-verify's built-in timeout): signals can only be installed from the
main thread of the main interpreter, so math-verify raises `ValueError` when it is called from a
thread pool, an asyncio `to_thread` call or a threaded Ray actor, and an alarm also fights any
other SIGALRM user in the process. Here a watchdog thread raises `DeadlineExceeded` *inside* the
calling thread (CPython's `PyThreadState_SetAsyncExc`) once the limit has passed; the call then
returns `None` to its caller. We pass `timeout_seconds=None` / `parsing_timeout=None` to math-verify
so that it never touches signals.

Limits, shared with the signal approach: the exception is delivered between Python bytecodes, so a
single long C call (a huge integer power) runs to its end before it is stopped; and a library that
swallows it with a bare `except:` keeps going until its next step. The watchdog fires once: firing
again could land outside the caller's `try` and escape as a stray exception.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class DeadlineExceeded(BaseException):
    """Raised inside the guarded thread. A BaseException so that `except Exception` cannot eat it."""


def _set_async_exc(thread_id: int, exc: type[BaseException] | None) -> None:
    """Schedule `exc` in thread `thread_id` (None clears a scheduled one)."""
    target = ctypes.py_object(exc) if exc is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), target)


class _Watchdog:
    """One guarded call: a thread that waits `seconds`, then interrupts the caller at most once."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._thread_id = threading.get_ident()
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._stopped = False
        self.fired = False
        self._thread = threading.Thread(target=self._watch, name="sophiavl-deadline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _watch(self) -> None:
        if self._stop_event.wait(self._seconds):
            return
        with self._lock:
            if not self._stopped:
                self.fired = True
                _set_async_exc(self._thread_id, DeadlineExceeded)

    def stop(self) -> None:
        """End the guard; drop the interrupt if it was scheduled but not yet delivered."""
        with self._lock:
            self._stopped = True
            self._stop_event.set()
            if self.fired:
                _set_async_exc(self._thread_id, None)


def call_with_deadline(fn: Callable[[], T], seconds: float | None) -> T | None:
    """`fn()`, or None when it runs past `seconds` (None or <= 0: no limit).

    Race-free because the watchdog fires at most once and only while the guard is running; `stop`
    takes the same lock and clears an interrupt that has not been delivered yet. An interrupt
    delivered anywhere between starting the watchdog and `stop` finishing is caught below.
    """
    if seconds is None or seconds <= 0:
        return fn()
    watchdog = _Watchdog(seconds)
    try:
        try:
            watchdog.start()  # inside the try: on a busy machine the limit can pass before start returns
            result = fn()
        finally:
            watchdog.stop()
    except DeadlineExceeded:
        watchdog.stop()  # the interrupt fired once and is consumed: nothing can follow it
        return None
    # fired but swallowed by the callee, or cleared before delivery: still a timeout
    return None if watchdog.fired else result
