"""The built-in reward server's ASGI app: OpenAI-style routes over an engine, behind guards.

Routes: GET /health (no key, as in vLLM), GET /v1/models, POST /v1/chat/completions. Guards: a
bearer key when one is set (401), a request size limit (413, see `BodyLimit`), then, in a worker
thread and before anything is decoded, the image pixels of a request and whether its text and
images can fit the model (400, `chat_request` and the engine's `admit`). Generation goes through
a `RequestBatcher`: concurrent requests share one batched `generate` in a worker thread, one batch
at a time, so /health keeps answering while the model works, and an oversized request is refused
beside the batch instead of inside it. After a large body the memory it took is handed back to
the system (`release_memory`), so one big request does not leave the server gigabytes heavier.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import gc
import json
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from sophiavl_cli.serving.batcher import BatchEngine, RequestBatcher
from sophiavl_cli.serving.chat_request import RequestError, parse_chat_request

logger = logging.getLogger(__name__)

LARGE_BODY_BYTES = 1 << 20  # after a body this large, freed memory is handed back to the system


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _error_body(status: int, message: str) -> bytes:
    kinds = {400: "BadRequestError", 401: "AuthenticationError", 404: "NotFoundError", 413: "RequestTooLarge"}
    error = {"message": message, "type": kinds.get(status, "InternalServerError"), "code": status}
    return json.dumps({"error": error}).encode()


class BodyLimit:
    """ASGI middleware answering 413 to bodies over `limit` bytes, declared or streamed (chunked).

    The body is read here, up to the limit, before the app runs, then replayed to it: an app that
    has started answering can no longer be told to send a 413 instead. After a large body has been
    answered, the memory it took is handed back (`release_memory`).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await self._reject(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                await self._reject(send)
                return
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)
        if size >= LARGE_BODY_BYTES:  # the request is answered and nothing refers to its body now
            chunks.clear()
            await asyncio.to_thread(release_memory)

    async def _reject(self, send: Send) -> None:
        body = _error_body(413, f"request body over the server's limit of {self.limit} bytes")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def release_memory() -> None:
    """Collect, then ask glibc to return free heap pages to the system (`malloc_trim`): CPython
    and glibc keep freed memory for reuse, so without this the peak of one large request stays
    in the server's RSS. Elsewhere (musl, macOS) only the collection happens."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _malloc_trim() -> Any:
    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


def build_app(
    engine: BatchEngine,
    *,
    served_model_name: str,
    api_key: str | None,
    max_request_bytes: int,
    max_images: int = 8,
    max_image_pixels: int | None = None,
    batcher: RequestBatcher | None = None,
) -> ASGIApp:
    """The ASGI app over a loaded engine (FastAPI inside a body-size guard).

    The name, key and size limit have no defaults here: `hf_server` owns them, and this module does
    not import it back (the entry point imports the app, never the other way round). `batcher`
    (default: one with the default window and batch size) queues the generations.
    """
    app = FastAPI(title="sophiavl reward server", docs_url=None, redoc_url=None, openapi_url=None)
    batcher = batcher or RequestBatcher(engine)
    admit = getattr(engine, "admit", None)
    created = int(time.time())

    def error(status: int, message: str) -> Response:
        return Response(_error_body(status, message), status_code=status, media_type="application/json")

    def authorised(request: Request) -> bool:
        if api_key is None:
            return True
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and secrets.compare_digest(token.strip().encode(), api_key.encode())

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not authorised(request):
            return error(401, "missing or wrong API key (send Authorization: Bearer <key>)")
        card = {"id": served_model_name, "object": "model", "created": created, "owned_by": "sophiavl"}
        return JSONResponse({"object": "list", "data": [card]})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        if not authorised(request):
            return error(401, "missing or wrong API key (send Authorization: Bearer <key>)")
        return await answer(await request.body())

    def parse(raw: bytes) -> Any:
        """JSON, checks and image decoding: off the event loop, beside whatever batch is running."""
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RequestError(400, "the request body is not valid JSON") from None
        return parse_chat_request(body, max_images=max_images, max_image_pixels=max_image_pixels, admit=admit)

    async def answer(raw: bytes) -> Response:
        try:
            chat = await asyncio.to_thread(parse, raw)
            if chat.model != served_model_name:
                return error(
                    404, f"The model `{chat.model}` does not exist; this server serves `{served_model_name}`."
                )
            generation = await batcher.submit(chat)
        except RequestError as exc:
            return error(exc.status, exc.message)
        except Exception:
            logger.exception("generation failed")
            return error(500, "generation failed; see the server log")
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": served_model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": generation.text},
                        "finish_reason": generation.finish_reason,
                        "logprobs": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": generation.prompt_tokens,
                    "completion_tokens": generation.completion_tokens,
                    "total_tokens": generation.prompt_tokens + generation.completion_tokens,
                },
            }
        )

    return BodyLimit(app, max_request_bytes)
