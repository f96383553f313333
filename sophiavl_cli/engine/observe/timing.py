"""Phase timers for the training loop.

`with timer("gen"):` both names a phase of the step (the driver reads as a list of phases) and
produces its metric, `timing/gen`, in seconds (a phase must be defined in `sophiavl_cli.metrics`). Nested or repeated phases add up within a step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from sophiavl_cli.metrics.keys import TIMING_STEP
from sophiavl_cli.metrics.registry import timing_key


class StepTimer:
    """Wall-clock seconds per named phase, reset once per step."""

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._step_start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - start

    def add(self, name: str, seconds: float) -> None:
        """Record time measured elsewhere (e.g. inside a worker) under `timing/<name>`."""
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def phases(self) -> dict[str, float]:
        """`timing/<phase>` for every phase seen since the last reset."""
        return {timing_key(name): round(value, 6) for name, value in self._seconds.items()}

    def metrics(self) -> dict[str, float]:
        """`timing/<phase>` for every phase seen this step, plus `timing/step` (the whole step)."""
        out = self.phases()
        out[TIMING_STEP] = round(time.perf_counter() - self._step_start, 6)
        return out

    def reset(self) -> None:
        self._seconds = {}
        self._step_start = time.perf_counter()
