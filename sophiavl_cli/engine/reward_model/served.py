"""`reward.thinking.serve`: the thinking reward model served inside the training cluster, as a Ray actor.

The actor (`RewardModelActor`) reserves `serve.gpus` GPUs (none on CPU) and runs the same server
`sophiavl serve-reward` runs (`serving.launcher`: vLLM, or the built-in hf server on CPU) on its
node, behind a fresh API key. The driver's client speaks to it over the OpenAI-compatible API like
to any endpoint. `watch.ServerWatch` checks it every `serve.health_interval` seconds; when the
server (or its actor) dies it is started again, up to `serve.max_restarts` times, on the same port
when it is free (else the client is pointed at the new address), `rm/serve_restarts` counts it and
the run says so. Calls in flight meanwhile are retried by the client (connection errors back off)
or fall back to outcome-only rewards for their group.

Placement: the actor is created once the training workers hold their GPUs, in its own placement
group; the run checks first that the cluster has the GPUs of both (`trainer` world size + `gpus`)
and says which is short. An explicit endpoint (`reward.thinking.url`, `$OPENAI_API_URL`) wins over
`serve`. `<run_dir>/reward_server.json` records where it runs (host, pid, restarts; no key).

Departure from the release: it expected a vLLM server started by hand on spare GPUs and its URL
wired in; here one `sophiavl train` owns the reward model's lifetime.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from sophiavl_cli.config.reward import RMServeConfig, ThinkingRewardConfig
from sophiavl_cli.engine.reward_model.watch import RestartingClient, ServerWatch
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_write_json
from sophiavl_cli.hub.names import RM_SERVED_NAME

PLACEMENT_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 900.0
RECORD_FILE = "reward_server.json"


class RewardModelActor:
    """Runs one reward server on its node (a Ray actor; its GPUs are the ones Ray gave it)."""

    def __init__(self, serve: RMServeConfig, served_name: str, api_key: str, env: dict[str, str]) -> None:
        os.environ.update(env)
        self.serve = serve
        self.served_name = served_name
        self.api_key = api_key
        self.server: Any = None

    def start(self, port: int | None = None) -> dict[str, Any]:
        """Start the server (blocks until /health answers), on `port` or a free one; its address and pid."""
        import ray

        from sophiavl_cli.serving.launcher import start_reward_server

        serve = self.serve
        vllm_args = served_vllm_args(serve)
        self.server = start_reward_server(
            serve.model,
            backend=serve.backend,
            served_model_name=self.served_name,
            host=ray.util.get_node_ip_address(),
            port=port,
            api_key=self.api_key,
            max_new_tokens=serve.max_new_tokens,
            dtype=serve.dtype,
            gpu_memory_utilization=serve.gpu_memory_utilization if serve.backend == "vllm" else None,
            vllm_args=vllm_args,
        )
        return {
            "base_url": self.server.base_url,
            "pid": self.server.process.pid,
            "host": ray.util.get_node_ip_address(),
        }

    def healthy(self) -> bool:
        """The server process runs and answers GET /health."""
        import httpx

        if self.server is None or not self.server.running:
            return False
        root = self.server.base_url.removesuffix("/v1")
        try:
            with httpx.Client(timeout=10.0, trust_env=False) as http:
                return http.get(f"{root}/health").status_code == 200
        except httpx.HTTPError:
            return False

    def restart(self) -> dict[str, Any]:
        """Start again on the same port when it is free (calls in flight retry there), else on another."""
        port = int(self.server.base_url.rsplit(":", 1)[1].split("/")[0]) if self.server is not None else None
        self.stop()
        try:
            return self.start(port)
        except Exception:  # the port is taken meanwhile
            return self.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None


class ServedThinkingService:
    """`ThinkingService`'s interface (start / client / describe / close) over a `RewardModelActor`.

    The actor starts in `client()`, after the training workers are placed: Ray is up by then, and
    its teardown is registered on `stack` after Ray's, so it runs first (the server stops before
    the cluster goes away).
    """

    embedded = True

    def __init__(
        self,
        cfg: ThinkingRewardConfig,
        stack: ExitStack,
        *,
        training_gpus: int = 0,
        record_dir: Path | None = None,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        assert cfg.serve is not None
        self.cfg = cfg
        self.serve: RMServeConfig = cfg.serve
        self.stack = stack
        self.training_gpus = training_gpus
        self.record_dir = record_dir
        self.env = env
        self.api_key = secrets.token_urlsafe(24)
        self.actor: Any = None
        self.placement: Any = None
        self.info: dict[str, Any] = {}
        self._client: RestartingClient | None = None
        self._stop_registered = False
        self._watch: ServerWatch | None = None

    def start(self) -> None:
        """Nothing yet: the actor needs the cluster, which the workers bring up (see `client`)."""

    def client(self) -> RestartingClient:
        if self._client is None:
            self.info = self._start_actor()
            client = RestartingClient.from_config(
                self.cfg,
                self.env,
                url=self.info["base_url"],
                model=self.cfg.model or RM_SERVED_NAME,
                api_key=self.api_key,
            )
            client.health_check()
            self._client = client
            self._record()
            self._watch = ServerWatch(
                "the served reward model",
                client,
                healthy=self._healthy,
                restart=self._restart_url,
                interval=self.serve.health_interval,
                max_restarts=self.serve.max_restarts,
                on_restart=self._record,
            )
            self._watch.start()
            self.stack.callback(self._halt_monitor)  # runs before the actor stops: no restart at teardown
        return self._client

    def describe(self) -> str:
        return f"served in the cluster ({self.serve.model}, {self.serve.backend}, {self.info.get('base_url', 'starting')})"

    # ---- actor lifecycle -------------------------------------------------------------------------

    def _start_actor(self) -> dict[str, Any]:
        """Reserve the actor's placement (once, checking the cluster's GPUs), then start an actor there."""
        import ray
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from sophiavl_cli.engine.parallel.cluster import forwarded_env

        gpus = self.serve.gpus
        if gpus and self.placement is None:
            have = ray.cluster_resources().get("GPU", 0)
            if have < self.training_gpus + gpus:
                raise UserError(
                    f"reward.thinking.serve needs {gpus} GPU(s) beside the training workers' {self.training_gpus}, "
                    f"but the Ray cluster has {have:g}; add a node, lower reward.thinking.serve.gpus or set "
                    "reward.thinking.url"
                )
            bundle = {"CPU": 1.0, "GPU": float(gpus)}
            self.placement = placement_group([bundle], strategy="STRICT_PACK")
            self.stack.callback(self._remove_placement)
            ready, _ = ray.wait([self.placement.ready()], timeout=PLACEMENT_TIMEOUT_S)
            if not ready:
                raise UserError(
                    f"the Ray cluster cannot place the reward model's actor ({bundle}) beside the training "
                    "workers; free resources, lower reward.thinking.serve.gpus or set reward.thinking.url"
                )
        if not self._stop_registered:
            self.stack.callback(self._stop_actor)
            self._stop_registered = True
        # Without GPUs (CPU runs) the actor takes no reserved resources: the workers hold the cores.
        options: dict[str, Any] = {"num_cpus": 0, "num_gpus": 0}
        if self.placement is not None:
            options = {
                "num_cpus": 1,
                "num_gpus": gpus,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self.placement, placement_group_bundle_index=0
                ),
            }
        env = forwarded_env(os.environ)
        self.actor = (
            ray.remote(RewardModelActor)
            .options(max_concurrency=2, **options)  # a health check may run while a restart is in progress
            .remote(self.serve, self.cfg.model or RM_SERVED_NAME, self.api_key, env)
        )
        return dict(ray.get(self.actor.start.remote(), timeout=READY_TIMEOUT_S))

    def _healthy(self) -> bool:
        import ray

        return bool(ray.get(self.actor.healthy.remote(), timeout=60))  # raises when the actor itself died

    def _restart_url(self) -> str:
        self.info = self._restart()
        return str(self.info["base_url"])

    def _restart(self) -> dict[str, Any]:
        import ray

        try:
            return dict(ray.get(self.actor.restart.remote(), timeout=READY_TIMEOUT_S))
        except ray.exceptions.RayActorError:  # the actor is gone: a new one in the same placement
            self._stop_actor()
            return self._start_actor()

    def _record(self) -> None:
        if self.record_dir is None:
            return
        assert self._client is not None
        record = {
            "model": self.serve.model,
            "backend": self.serve.backend,
            "base_url": self.info.get("base_url"),
            "host": self.info.get("host"),
            "pid": self.info.get("pid"),
            "restarts": self._client.restarts,
        }
        atomic_write_json(self.record_dir / RECORD_FILE, record, indent=1)

    def _stop_actor(self) -> None:
        import ray

        actor, self.actor = self.actor, None
        if actor is None or not ray.is_initialized():
            return
        with contextlib.suppress(Exception):
            ray.get(actor.stop.remote(), timeout=60)
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)

    def _remove_placement(self) -> None:
        import ray

        if self.placement is not None and ray.is_initialized():
            with contextlib.suppress(Exception):
                ray.util.remove_placement_group(self.placement)
        self.placement = None

    def _halt_monitor(self) -> None:
        if self._watch is not None:
            self._watch.halt(timeout=READY_TIMEOUT_S)

    def close(self) -> None:
        self._halt_monitor()
        if self._client is not None:
            self._client.close()
        self._stop_actor()


def served_vllm_args(serve: RMServeConfig) -> list[str]:
    """`vllm serve` flags the recipe's `reward.thinking.serve` asks for (none for the hf backend)."""
    if serve.backend != "vllm":
        return []
    args = ["--tensor-parallel-size", str(serve.tensor_parallel_size)]
    return args + (["--max-model-len", str(serve.max_model_len)] if serve.max_model_len is not None else [])


def thinking_service(
    cfg: ThinkingRewardConfig,
    stack: ExitStack,
    *,
    training_gpus: int = 0,
    record_dir: Path | None = None,
    env: Mapping[str, str] = os.environ,
) -> Any:
    """The run's RM endpoint: an explicit URL > `reward.thinking.serve` (a Ray actor) > `ThinkingService`."""
    from sophiavl_cli.engine.reward_model.service import ThinkingService

    if cfg.serve is not None and not (cfg.url or env.get("OPENAI_API_URL")):
        return ServedThinkingService(cfg, stack, training_gpus=training_gpus, record_dir=record_dir, env=env)
    return ThinkingService(cfg, env)
