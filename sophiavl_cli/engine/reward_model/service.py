"""The thinking reward model for a run: the configured endpoint, or the built-in server.

Endpoint precedence: `reward.thinking.url` > `$OPENAI_API_URL` > a built-in server, started on a
free loopback port with `reward.thinking.serve_model` for the length of the run. Only a recipe
that names `serve_model` gets a built-in server (the quickstart names the tiny built-in model, so
`sophiavl train recipes/quickstart.yaml` needs nothing else); with none of the three the run
stops before Ray starts, rather than scoring rollouts with a model nobody chose. The server
starts in a background thread so it loads while Ray and the workers come up, and is watched like
the served actor (`watch.ServerWatch`, `reward.thinking.serve`'s default interval and restarts):
killed mid-run, it is started again on its port with its key, and the run says so.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any

from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.engine.reward_model.watch import (
    DEFAULT_HEALTH_INTERVAL,
    DEFAULT_MAX_RESTARTS,
    RestartingClient,
    ServerWatch,
)
from sophiavl_cli.errors import UserError
from sophiavl_cli.rewards.thinking import ThinkingRewardClient

NO_ENDPOINT = (
    "algorithm.trust.enable needs a thinking reward model: set reward.thinking.url, export OPENAI_API_URL, "
    "or name reward.thinking.serve_model (e.g. thinking-rm) or reward.thinking.serve.model (a Ray actor on its own "
    "GPUs) to serve one for the run"
)


class ThinkingService:
    """Owns the client (and the embedded server, when one was started). Use `start()` then `client()`."""

    def __init__(
        self,
        cfg: ThinkingRewardConfig,
        env: Mapping[str, str] = os.environ,
        *,
        health_interval: float = DEFAULT_HEALTH_INTERVAL,
        max_restarts: int = DEFAULT_MAX_RESTARTS,
    ) -> None:
        self.cfg = cfg
        self.env = env
        self.health_interval = health_interval
        self.max_restarts = max_restarts
        self._watch: ServerWatch | None = None
        self.embedded = not (cfg.url or env.get("OPENAI_API_URL"))
        if self.embedded and not cfg.serve_model:
            raise UserError(NO_ENDPOINT)
        self._server: Any = None
        self._pending: Future[Any] | None = None
        self._client: ThinkingRewardClient | None = None
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        """Begin starting the embedded server in the background (no-op for an external endpoint)."""
        if self.embedded:
            from sophiavl_cli.serving.launcher import start_reward_server

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reward-server")
            self._pending = self._pool.submit(start_reward_server, self.cfg.serve_model, backend="hf")

    def client(self) -> ThinkingRewardClient:
        """The client, once the endpoint answers (waits for the embedded server to be healthy)."""
        if self._client is None:
            if self.embedded:
                assert self._pending is not None, "call start() first"
                self._server = self._pending.result()
                client: ThinkingRewardClient = RestartingClient.from_config(
                    self.cfg,
                    self.env,
                    url=self._server.base_url,
                    model=self._server.model,
                    api_key=self._server.api_key,
                )
            else:
                client = ThinkingRewardClient.from_config(self.cfg, self.env)
            try:
                client.health_check()
            except BaseException:
                client.close()  # its HTTP session too: no "Unclosed client session" at exit
                raise
            self._client = client
            if isinstance(client, RestartingClient):
                self._watch = ServerWatch(
                    "the built-in reward server",
                    client,
                    healthy=self._server_healthy,
                    restart=self._restart_server,
                    interval=self.health_interval,
                    max_restarts=self.max_restarts,
                )
                self._watch.start()
        return self._client

    def _server_healthy(self) -> bool:
        """The child process runs and answers GET /health."""
        import httpx

        server = self._server
        if server is None or not server.running:
            return False
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            return http.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200

    def _restart_server(self) -> str:
        """Start it again with its key, on its port when that is free (calls in flight retry there)."""
        from sophiavl_cli.serving.launcher import start_reward_server

        old = self._server
        old.stop()
        port = int(old.base_url.rsplit(":", 1)[1].split("/")[0])
        start = partial(start_reward_server, self.cfg.serve_model, backend="hf", api_key=old.api_key)
        try:
            self._server = start(port=port)
        except Exception:  # the port was taken meanwhile
            self._server = start()
        return str(self._server.base_url)

    def describe(self) -> str:
        if self.embedded:
            url = self._server.base_url if self._server is not None else "starting"
            return f"built-in server ({self.cfg.serve_model}, {url})"
        return self._client.base_url if self._client is not None else "external endpoint"

    def close(self) -> None:
        if self._watch is not None:  # first: a server stopped on purpose is not restarted
            self._watch.halt(timeout=600)
        if self._client is not None:
            self._client.close()
        if self._pending is not None:
            try:
                server = self._server or self._pending.result(timeout=600)
            except Exception:  # it never started: nothing to stop
                server = None
            if server is not None:
                server.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
