"""Per-step counters of the thinking-reward client, reported under the `rm/*` metric names.

Thread-safe: the client records on its event-loop thread while the driver reads between steps.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from sophiavl_cli.metrics.keys import RM_CALLS as CALLS
from sophiavl_cli.metrics.keys import RM_FAILURES as FAILURES
from sophiavl_cli.metrics.keys import RM_FAILURES_FAMILY
from sophiavl_cli.metrics.keys import RM_LATENCY_P50 as LATENCY_P50
from sophiavl_cli.metrics.keys import RM_LATENCY_P95 as LATENCY_P95
from sophiavl_cli.metrics.keys import RM_RETRIES as RETRIES
from sophiavl_cli.metrics.registry import family_key


class _Result(Protocol):
    failure: str | None
    attempts: int
    latency_s: float


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list; no interpolation between calls."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class RMStats:
    """Calls, failures by kind, retries and latencies since the last reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls = 0
        self._retries = 0
        self._failures: Counter[str] = Counter()
        self._latencies: list[float] = []

    def record(self, results: Iterable[_Result]) -> None:
        with self._lock:
            for result in results:
                self._calls += 1
                self._retries += max(0, result.attempts - 1)
                if result.failure is not None:
                    self._failures[result.failure] += 1
                if result.attempts > 0:
                    self._latencies.append(result.latency_s)

    def snapshot(self, reset: bool = False) -> dict[str, float]:
        """The metrics dict; latency keys are present only when some call was made."""
        with self._lock:
            out: dict[str, float] = {
                CALLS: float(self._calls),
                FAILURES: float(sum(self._failures.values())),
                RETRIES: float(self._retries),
            }
            for kind, count in sorted(self._failures.items()):
                out[family_key(RM_FAILURES_FAMILY, kind)] = float(count)
            if self._latencies:
                out[LATENCY_P50] = percentile(self._latencies, 50)
                out[LATENCY_P95] = percentile(self._latencies, 95)
            if reset:
                self._calls = self._retries = 0
                self._failures.clear()
                self._latencies.clear()
            return out
