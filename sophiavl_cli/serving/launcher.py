"""Start a reward server in a child process on a free loopback port, wait until it answers, stop it.

Training uses this when the recipe names no RM endpoint: it serves `reward.thinking.serve_model`
(default the built-in tiny model) for the length of the run. The child gets a fresh random API
key through its environment, so other local users cannot query it; `RewardServer.api_key` hands it
to the client and never shows up in `repr`.

Example:
    with start_reward_server("builtin:tiny-qwen2.5-vl") as server:
        client = ThinkingRewardClient(server.base_url, server.model, api_key=server.api_key)
"""

from __future__ import annotations

import atexit
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import httpx

from sophiavl_cli.errors import UserError
from sophiavl_cli.serving.hf_server import API_KEY_ENV, DEFAULT_SERVED_NAME
from sophiavl_cli.serving.process import log_tail, spawn, stop_group

Backend = Literal["hf", "vllm"]
_PORT_TAKEN = ("address already in use", "errno 98")


class RewardServer:
    """A running child server; `base_url` ends in /v1. A context manager; `stop()` is idempotent."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        *,
        base_url: str,
        model: str,
        api_key: str,
        log_path: Path,
        owns_log: bool = False,
    ) -> None:
        self.process = process
        self.base_url = base_url
        self.model = model
        self.api_key = api_key
        self.log_path = log_path
        self.owns_log = owns_log  # a temp log we created: removed on stop
        atexit.register(self.stop)

    def __repr__(self) -> str:
        state = "running" if self.running else f"exited {self.process.returncode}"
        return (
            f"RewardServer(base_url={self.base_url!r}, model={self.model!r}, pid={self.process.pid}, {state})"
        )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self, grace: float = 15.0) -> None:
        stop_group(self.process, grace=grace)
        atexit.unregister(self.stop)
        if self.owns_log:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> RewardServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now (the child binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def server_command(
    model_ref: str,
    *,
    backend: Backend,
    host: str,
    port: int,
    served_model_name: str,
    max_new_tokens: int,
    dtype: str,
    gpu_memory_utilization: float | None = None,
    vllm_args: Sequence[str] = (),
) -> list[str]:
    """The child's argv for either backend (no secrets in it); `vllm_args` are appended for vllm."""
    if backend == "hf":
        return [
            sys.executable,
            "-m",
            "sophiavl_cli.serving.hf_server",
            model_ref,
            "--host",
            host,
            "--port",
            str(port),
            "--served-model-name",
            served_model_name,
            "--max-new-tokens",
            str(max_new_tokens),
            "--dtype",
            dtype,
        ]
    if backend == "vllm":
        from sophiavl_cli.models.resolve import resolve_model
        from sophiavl_cli.serving.vllm_server import ensure_vllm, vllm_command

        ensure_vllm("the embedded reward server with backend vllm")
        return vllm_command(
            resolve_model(model_ref),
            host=host,
            port=port,
            served_model_name=served_model_name,
            dtype=dtype,
            max_new_tokens=max_new_tokens,
            gpu_memory_utilization=gpu_memory_utilization,
            extra_args=vllm_args,
        )
    raise UserError(f"reward server backend {backend!r} is not one of hf, vllm")


def start_reward_server(
    model_ref: str,
    *,
    backend: Backend = "hf",
    served_model_name: str = DEFAULT_SERVED_NAME,
    host: str = "127.0.0.1",
    port: int | None = None,
    api_key: str | None = None,
    max_new_tokens: int = 64,
    dtype: str = "auto",
    gpu_memory_utilization: float | None = None,
    startup_timeout: float = 600.0,
    log_path: Path | None = None,
    vllm_args: Sequence[str] = (),
) -> RewardServer:
    """Start a server and return once GET /health answers 200.

    `gpu_memory_utilization` (vllm only) is the share of GPU memory vLLM may take, or of host memory
    on the CPU backend; leave room for training when the RM shares a GPU with it.
    `port=None` picks a free loopback port (and retries on the rare race where another process
    takes it first); `api_key=None` generates one. The child's output goes to `log_path`, by default
    a temp file that `stop()` removes; when the child dies or never gets healthy, the error shows
    the log's tail and the log is kept.
    """
    key = api_key or secrets.token_urlsafe(24)
    owns_log = log_path is None
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix="sophiavl-reward-server-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in (API_KEY_ENV, "VLLM_API_KEY")}
    env[API_KEY_ENV if backend == "hf" else "VLLM_API_KEY"] = key
    for _ in range(3 if port is None else 1):
        chosen = port if port is not None else free_port(host)
        command = server_command(
            model_ref,
            backend=backend,
            host=host,
            port=chosen,
            served_model_name=served_model_name,
            max_new_tokens=max_new_tokens,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            vllm_args=vllm_args,
        )
        start = log_path.stat().st_size if log_path.exists() else 0  # this attempt's lines only
        with log_path.open("ab") as log:
            process = spawn(command, env=env, log=log)
        server = RewardServer(
            process,
            base_url=f"http://{host}:{chosen}/v1",
            model=served_model_name,
            api_key=key,
            log_path=log_path,
        )
        failure = _wait_healthy(server, f"http://{host}:{chosen}/health", startup_timeout)
        if failure is None:
            server.owns_log = owns_log
            return server
        server.stop()
        if port is None and any(s in log_tail(log_path, start=start).lower() for s in _PORT_TAKEN):
            continue
        break
    raise UserError(
        f"the {backend} reward server for {model_ref} {failure}; last lines of {log_path}:\n{log_tail(log_path)}"
    )


def _wait_healthy(server: RewardServer, health_url: str, timeout: float) -> str | None:
    """None once /health answers 200; else why not (the child exited, or time ran out)."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    with httpx.Client(timeout=2.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if not server.running:
                return f"exited with code {server.process.returncode} before it was ready"
            try:
                if http.get(health_url).status_code == 200:
                    return None
            except httpx.HTTPError:
                pass
            time.sleep(delay)
            delay = min(delay * 1.5, 1.0)
    return f"did not answer {health_url} within {timeout:.0f} s"
