"""A reward server the run owns, kept alive: health checks, restarts, and a line for each.

Both servers a run can own use it: the built-in hf server the driver starts (`service.py`,
`reward.thinking.serve_model`) and the Ray actor (`served.py`, `reward.thinking.serve`). A
thread checks the server every `interval` seconds; when it is dead (the process gone, or /health
not answering) it is started again, up to `max_restarts` times, the client is pointed at where it
now listens, `rm/serve_restarts` counts it and the run says so (`the built-in reward server died;
restarting it (1 of 1)`, `... is back at URL`). Calls in flight meanwhile are retried by the client
(connection errors back off) or fall back to outcome-only rewards for their group; a server that
stays down ends the run through the failure policy (`rewards/failure_policy.py`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from sophiavl_cli.config.reward import RMServeConfig
from sophiavl_cli.metrics.keys import RM_SERVE_RESTARTS
from sophiavl_cli.rewards.thinking import ThinkingRewardClient

logger = logging.getLogger(__name__)

# The built-in server has no `reward.thinking.serve` section: it is watched with that section's defaults.
DEFAULT_HEALTH_INTERVAL: float = RMServeConfig.model_fields["health_interval"].default
DEFAULT_MAX_RESTARTS: int = RMServeConfig.model_fields["max_restarts"].default


class RestartingClient(ThinkingRewardClient):
    """The thinking-reward client of a server the run owns: its stats also carry `rm/serve_restarts`."""

    restarts: int = 0

    def stats(self, reset: bool = False) -> dict[str, float]:
        return super().stats(reset) | {RM_SERVE_RESTARTS: float(self.restarts)}


class ServerWatch:
    """The watching thread; `start()` once the server answers, `halt()` before it is stopped on purpose.

    `healthy()` says whether the server is alive (an exception counts as no); `restart()` starts it
    again and returns its base URL (an exception ends the watch: the calls then fail and the
    failure policy decides); `on_restart()` runs after each restart (e.g. to record where it runs).
    """

    def __init__(
        self,
        what: str,
        client: RestartingClient,
        *,
        healthy: Callable[[], bool],
        restart: Callable[[], str],
        interval: float = DEFAULT_HEALTH_INTERVAL,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
        on_restart: Callable[[], None] | None = None,
    ) -> None:
        self.what = what
        self.client = client
        self.healthy = healthy
        self.restart = restart
        self.interval = interval
        self.max_restarts = max_restarts
        self.on_restart = on_restart
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.settled = threading.Event()  # set after each restart attempt, whatever its outcome

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sophiavl-rm-watch", daemon=True)
        self._thread.start()

    def halt(self, timeout: float | None = None) -> None:
        """Stop watching (a restart in progress finishes first): the server may now be stopped."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=timeout)

    def _alive(self) -> bool:
        try:
            return bool(self.healthy())
        except Exception:
            return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if self._alive() or self._stop.is_set():
                continue
            if self.client.restarts >= self.max_restarts:
                logger.error(
                    "%s is down and its %d restart(s) are used up; its calls fail from now on",
                    self.what,
                    self.max_restarts,
                )
                return
            self.client.restarts += 1
            logger.warning(
                "%s died; restarting it (%d of %d)", self.what, self.client.restarts, self.max_restarts
            )
            try:
                url = self.restart()
            except Exception as exc:
                logger.error("restarting %s failed: %s", self.what, exc)
                self.settled.set()
                return
            self.client.repoint(url)
            if self.on_restart is not None:
                self.on_restart()
            logger.warning("%s is back at %s", self.what, url)
            self.settled.set()
