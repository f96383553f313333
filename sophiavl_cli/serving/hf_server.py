"""The built-in OpenAI-compatible reward server (FastAPI + uvicorn over transformers generate).

For CPU and development, and the server training starts on its own when a recipe names no RM
endpoint. It speaks the part of vLLM's API the thinking-reward client uses:

    GET  /health                 200 once the model is loaded (no key needed, as in vLLM)
    GET  /v1/models              the served model name
    POST /v1/chat/completions    text + data-URL images, temperature/top_p/seed/max_tokens, and
                                 structured_outputs={"choice": [...]} (answer is one of the strings)

Guards (see `hf_app`): a bearer key when one is set (401), a request size limit (413, 16 MiB by
default), data-URL images only (http URLs are refused), and before anything is decoded a pixel
budget per request and a check that the text and images fit the model (400). Concurrent requests are batched (`batcher`: up to
--max-batch-size requests per `generate`, gathered within --batch-window-ms). This module stays light (no
FastAPI or torch at import) so the CLI and the launcher can read its defaults cheaply.

Usage (the launcher runs this; users run `sophiavl serve-reward MODEL --backend hf`):
    SOPHIAVL_REWARD_API_KEY=... python -m sophiavl_cli.serving.hf_server builtin:tiny-qwen2.5-vl --port 8000
"""

from __future__ import annotations

import argparse
import logging
import os

from sophiavl_cli.hub.names import RM_SERVED_NAME
from sophiavl_cli.serving.batcher import DEFAULT_MAX_BATCH, DEFAULT_WINDOW_S, RequestBatcher

API_KEY_ENV = "SOPHIAVL_REWARD_API_KEY"
DEFAULT_SERVED_NAME = RM_SERVED_NAME
# A thinking-RM request is a question, a response and its images. 16 MiB holds several
# multi-megapixel PNGs base64-encoded; 64 MiB let a 50 MB text through to the tokenizer.
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
# Decoded pixels per request (all images), counted from the headers before decoding: 48 M is
# ~150 MB of RGB, far above what the processor keeps (it resizes to its max_pixels).
DEFAULT_MAX_IMAGE_PIXELS = 48_000_000


def serve(
    model_ref: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    served_model_name: str = DEFAULT_SERVED_NAME,
    api_key: str | None = None,
    max_new_tokens: int = 64,
    dtype: str = "auto",
    device: str | None = None,
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
    max_batch_size: int = DEFAULT_MAX_BATCH,
    batch_window_ms: float = DEFAULT_WINDOW_S * 1000,
) -> None:
    """Load the model, then serve until interrupted (blocking)."""
    import uvicorn

    from sophiavl_cli.models.resolve import resolve_model
    from sophiavl_cli.serving.hf_app import build_app
    from sophiavl_cli.serving.hf_engine import HFRewardEngine

    engine = HFRewardEngine(
        resolve_model(model_ref), dtype=dtype, device=device, max_new_tokens=max_new_tokens
    )
    app = build_app(
        engine,
        served_model_name=served_model_name,
        api_key=api_key,
        max_request_bytes=max_request_bytes,
        max_image_pixels=max_image_pixels,
        batcher=RequestBatcher(engine, max_batch=max_batch_size, window_s=batch_window_ms / 1000),
    )
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)


def main(argv: list[str] | None = None) -> None:
    """`python -m sophiavl_cli.serving.hf_server MODEL ...`; the key comes from $SOPHIAVL_REWARD_API_KEY."""
    from sophiavl_cli.console import fail
    from sophiavl_cli.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m sophiavl_cli.serving.hf_server")
    parser.add_argument("model")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=DEFAULT_SERVED_NAME)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp16", "fp32"])
    parser.add_argument("--device", default=None)
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES)
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_IMAGE_PIXELS)
    parser.add_argument("--max-batch-size", type=int, default=DEFAULT_MAX_BATCH, help="requests per generate")
    parser.add_argument(
        "--batch-window-ms",
        type=float,
        default=DEFAULT_WINDOW_S * 1000,
        help="wait for company (idle server)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        serve(
            args.model,
            host=args.host,
            port=args.port,
            served_model_name=args.served_model_name,
            api_key=os.environ.get(API_KEY_ENV) or None,
            max_new_tokens=args.max_new_tokens,
            dtype=args.dtype,
            device=args.device,
            max_request_bytes=args.max_request_bytes,
            max_image_pixels=args.max_image_pixels,
            max_batch_size=args.max_batch_size,
            batch_window_ms=args.batch_window_ms,
        )
    except UserError as exc:
        fail(str(exc))
        raise SystemExit(exc.exit_code) from None


if __name__ == "__main__":
    main()
