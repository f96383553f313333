"""The thinking reward model for a run: the configured endpoint, or the built-in server.

Endpoint precedence: `reward.thinking.url` > `$OPENAI_API_URL` > a built-in server, started on a
free loopback port with `reward.thinking.serve_model` for the length of the run. Only a recipe
that names `serve_model` gets a built-in server (the quickstart names the tiny built-in model, so
`sophiavl train recipes/quickstart.yaml` needs nothing else); with none of the three the run
stops before Ray starts, rather than scoring rollouts with a model nobody chose. The server
starts in a background thread so it loads while Ray and the workers come up.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.errors import UserError
from sophiavl_cli.rewards.thinking import ThinkingRewardClient

NO_ENDPOINT = (
    "algorithm.trust.enable needs a thinking reward model: set reward.thinking.url, export OPENAI_API_URL, "
    "or name reward.thinking.serve_model (e.g. thinking-rm) or reward.thinking.serve.model (a Ray actor on its own "
    "GPUs) to serve one for the run"
)


class ThinkingService:
    """Owns the client (and the embedded server, when one was started). Use `start()` then `client()`."""

    def __init__(self, cfg: ThinkingRewardConfig, env: Mapping[str, str] = os.environ) -> None:
        self.cfg = cfg
        self.env = env
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
                client = ThinkingRewardClient.from_config(
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
        return self._client

    def describe(self) -> str:
        if self.embedded:
            url = self._server.base_url if self._server is not None else "starting"
            return f"built-in server ({self.cfg.serve_model}, {url})"
        return self._client.base_url if self._client is not None else "external endpoint"

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._pending is not None:
            try:
                server = self._pending.result(timeout=600)
            except Exception:  # it never started: nothing to stop
                server = None
            if server is not None:
                server.stop()
        if self._pool is not None:
            self._pool.shutdown(wait=False)
