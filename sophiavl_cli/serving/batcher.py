"""Dynamic batching for the built-in reward server: concurrent requests share one `generate`.

A trainer sends a step's RM calls at once (64 in flight by default); one `generate` per request
made them queue behind each other, so the wait grew with n. Here the first request of an idle
server waits up to `window_s` for company, up to `max_batch` requests go to the engine together
(in a worker thread, so the event loop keeps answering /health), and whatever arrives while a
batch runs forms the next one. Batches run one at a time: the model is never entered twice.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # kept light: hf_server reads the defaults below without PIL or FastAPI
    from sophiavl_cli.serving.chat_request import ChatRequest

DEFAULT_MAX_BATCH = 16  # requests per batched generate
DEFAULT_WINDOW_S = 0.01  # how long an idle server's first request waits for others


class BatchEngine(Protocol):
    def generate_batch(self, requests: list[ChatRequest]) -> list[Any]:
        """One result per request, in order: a generation, or the exception (`RequestError`) that
        request alone failed with."""
        ...

    def admit(self, texts: list[str], image_sizes: list[tuple[int, int]]) -> None:
        """Raise `RequestError` for a request that cannot fit, before anything is decoded; called
        outside the batch, from any thread (`chat_request.parse_chat_request`)."""
        ...


class RequestBatcher:
    """Queue of pending requests, drained in batches by one task on the server's event loop."""

    def __init__(
        self, engine: BatchEngine, *, max_batch: int = DEFAULT_MAX_BATCH, window_s: float = DEFAULT_WINDOW_S
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if window_s < 0:
            raise ValueError(f"window_s must be >= 0, got {window_s}")
        self.engine = engine
        self.max_batch = max_batch
        self.window_s = window_s
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run (tests, logs)
        self._queue: asyncio.Queue[tuple[ChatRequest, asyncio.Future[Any]]] | None = None
        self._task: asyncio.Task[None] | None = None

    async def submit(self, request: ChatRequest) -> Any:
        """The request's generation once its batch has run; raises its `RequestError`."""
        loop = asyncio.get_running_loop()
        if self._queue is None or self._task is None or self._task.done():
            self._queue = self._queue or asyncio.Queue()
            self._task = loop.create_task(self._drain())
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _drain(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            deadline = loop.time() + self.window_s
            while len(batch) < self.max_batch:
                if not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            live = [(request, future) for request, future in batch if not future.done()]  # cancelled: gone
            if not live:
                continue
            self.batch_sizes[len(live)] += 1
            try:
                results = await asyncio.to_thread(self.engine.generate_batch, [r for r, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"the engine answered {len(results)} of {len(live)} requests")
            except Exception as exc:  # the whole batch failed: every caller sees it
                for _, future in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), result in zip(live, results, strict=True):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
