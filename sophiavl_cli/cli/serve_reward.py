"""`sophiavl serve-reward MODEL`: serve a thinking reward model on an OpenAI-compatible API.

Usage:
    sophiavl serve-reward thinking-rm --backend vllm --port 8000        # the released 3B RM on a GPU
    sophiavl serve-reward builtin:tiny-qwen2.5-vl --backend hf          # CPU / development
    SOPHIAVL_REWARD_API_KEY=secret sophiavl serve-reward ./my-rm --host 0.0.0.0

Then point training at it: OPENAI_API_URL=http://127.0.0.1:8000/v1 REWARD_MODEL=thinking-reward-model.
"""

from __future__ import annotations

from enum import Enum

import typer

from sophiavl_cli.console import console, err_console
from sophiavl_cli.serving.hf_server import (
    API_KEY_ENV,
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_SERVED_NAME,
)

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Backend(str, Enum):
    auto = "auto"
    vllm = "vllm"
    hf = "hf"


class DType(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


def pick_backend(backend: Backend) -> str:
    """`auto`: vLLM when it is installed and a GPU is visible, else the built-in hf server."""
    if backend != Backend.auto:
        return backend.value
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"


def serve_reward(
    model: str = typer.Argument(
        ..., help="Model folder, alias (thinking-rm), hub id in the cache or builtin:*."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Interface to bind; loopback unless you need remote access."
    ),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    served_model_name: str = typer.Option(
        DEFAULT_SERVED_NAME, "--served-model-name", help="Name clients ask for (REWARD_MODEL)."
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar=API_KEY_ENV,
        show_envvar=True,
        help="Require this bearer key (prefer the environment variable: argv is visible to other users).",
    ),
    backend: Backend = typer.Option(
        Backend.auto, "--backend", help="vllm (GPU), hf (transformers, CPU/dev), or auto."
    ),
    max_new_tokens: int = typer.Option(
        64, "--max-new-tokens", min=1, help="Longest reply (default for vLLM)."
    ),
    dtype: DType = typer.Option(
        DType.auto, "--dtype", help="Weights dtype; auto is bf16 on GPU, fp32 on CPU."
    ),
    max_model_len: int | None = typer.Option(
        None,
        "--max-model-len",
        min=1,
        help="vllm: context length to reserve (default: the model's); 16384 suits the 3B RM.",
    ),
    gpu_memory_utilization: float | None = typer.Option(
        None,
        "--gpu-memory-utilization",
        min=0.01,
        max=1.0,
        help="vllm: share of GPU memory to take (vLLM's default 0.9).",
    ),
    limit_images: int = typer.Option(4, "--limit-images", min=0, help="vllm: most images per request."),
    max_request_mb: float = typer.Option(
        DEFAULT_MAX_REQUEST_BYTES / 2**20, "--max-request-mb", help="hf: larger request bodies get HTTP 413."
    ),
    max_image_pixels: int = typer.Option(
        DEFAULT_MAX_IMAGE_PIXELS,
        "--max-image-pixels",
        min=1,
        help="hf: requests whose images hold more pixels in all get HTTP 400, before decoding.",
    ),
) -> None:
    """Serve MODEL on an OpenAI-compatible API (chat completions, /v1/models, /health) until Ctrl-C."""
    chosen = pick_backend(backend)
    if host not in _LOOPBACK and not api_key:
        err_console.print(
            f"[yellow]warning:[/] binding {host} without an API key: anyone who can reach it can use it"
        )
    console.print(
        f"serving [bold]{model}[/] as [bold]{served_model_name}[/] with {chosen} on http://{host}:{port}/v1 "
        f"(API key {'required' if api_key else 'not required'})"
    )
    if chosen == "hf":
        from sophiavl_cli.serving.hf_server import serve

        serve(
            model,
            host=host,
            port=port,
            served_model_name=served_model_name,
            api_key=api_key,
            max_new_tokens=max_new_tokens,
            dtype=dtype.value,
            max_request_bytes=int(max_request_mb * 2**20),
            max_image_pixels=max_image_pixels,
        )
        return
    from sophiavl_cli.models.resolve import resolve_model
    from sophiavl_cli.serving.vllm_server import ensure_vllm, run_vllm_server, vllm_command

    ensure_vllm()
    command = vllm_command(
        resolve_model(model),
        host=host,
        port=port,
        served_model_name=served_model_name,
        max_model_len=max_model_len,
        limit_images=limit_images,
        dtype=dtype.value,
        max_new_tokens=max_new_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
    )
    code = run_vllm_server(command, api_key=api_key)
    if code not in (0, 130):
        raise typer.Exit(code)
