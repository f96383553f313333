"""The thinking-reward client: score many rollouts concurrently on an OpenAI-compatible RM server.

Departures from the released code, which made up to 128 blocking calls per step one after another
on the driver, retried 10 times with 1..10 s sleeps and turned every failure into a score of 0:
- requests run concurrently (asyncio, at most `concurrency` in flight);
- each attempt has its own timeout; timeouts, connection errors, 429 and 5xx are retried with
  exponential backoff and full jitter (a 429's Retry-After is honoured); other 4xx are not;
- every result carries either a score in [0, 1] or a failure kind, never a made-up 0;
- the API key is sent as a bearer token (the released code never sent it) and never logged;
- when `constrained`, the request asks vLLM for one of the eleven scores (`structured_outputs`,
  the key the installed vLLM 0.32 reads; it ignores the older `guided_choice`, with a warning).

HTTP goes through aiohttp rather than the `openai` package's AsyncOpenAI: the request is one POST
of JSON and the errors are classified here anyway, and per call the openai client (pydantic
request/response models over httpx's connection pool) spent ~1 ms of CPU against ~0.2 ms for
aiohttp, which decided whether 128 calls take 1.1x or 1.5x the latency-bound ideal
(benchmarks/reward_client.py).

The training driver, which is not async, uses `submit(samples) -> Future` to start a step's calls on
the client's own event-loop thread, does its log-prob passes meanwhile, then collects the Future.

Example:
    client = ThinkingRewardClient("http://127.0.0.1:8000/v1", "thinking-reward-model")
    client.health_check()
    future = client.submit([ThinkingSample(prompt, response, [image])])
    results = future.result()   # [ThinkingResult(score=0.7, failure=None, attempts=1, latency_s=0.21)]
    client.close()
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import aiohttp
from PIL import Image

from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import RM_SERVED_NAME
from sophiavl_cli.rewards.rm_outcome import (
    RETRYABLE,
    Attempt,
    ThinkingResult,
    attempt_from_reply,
    attempt_from_status,
)
from sophiavl_cli.rewards.rm_request import (
    ImageEncoder,
    ThinkingSample,
    build_messages,
    normalize_base_url,
)
from sophiavl_cli.rewards.rm_stats import RMStats
from sophiavl_cli.rewards.score_parse import SCORE_CHOICES

if TYPE_CHECKING:
    from sophiavl_cli.config.recipe import ThinkingRewardConfig

__all__ = ["RETRYABLE", "ThinkingResult", "ThinkingRewardClient", "ThinkingSample"]

logger = logging.getLogger(__name__)

DEFAULT_MODEL = RM_SERVED_NAME
_JSON = "application/json"


class _LoopState:
    """The parts bound to one event loop: the HTTP session and the concurrency semaphore."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, session: aiohttp.ClientSession, concurrency: int
    ) -> None:
        self.loop = loop
        self.session = session
        self.semaphore = asyncio.Semaphore(concurrency)


class ThinkingRewardClient:
    """Async, bounded-concurrency client of a thinking reward model behind an OpenAI-compatible API."""

    def __init__(
        self,
        url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 64,
        timeout: float = 60.0,
        max_retries: int = 5,
        constrained: bool = True,
        *,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        max_tokens: int = 64,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        if concurrency < 1 or timeout <= 0 or max_retries < 0:
            raise ValueError("need concurrency >= 1, timeout > 0 and max_retries >= 0")
        self.base_url = normalize_base_url(url)
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.constrained = constrained
        self.max_tokens = max_tokens
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        source = os.environ if env is None else env
        self._api_key = api_key if api_key is not None else source.get(api_key_env) or None
        self._states: dict[int, _LoopState] = {}
        self._stats = RMStats()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_config(
        cls,
        cfg: ThinkingRewardConfig,
        env: Mapping[str, str] = os.environ,
        *,
        url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
    ) -> ThinkingRewardClient:
        """Build from the recipe section; `url`/`model`/`api_key` override it (the embedded server's).

        Endpoint: `url` > `cfg.url` > $OPENAI_API_URL; model: `model` > `cfg.model` > $REWARD_MODEL >
        "thinking-reward-model"; key: $<cfg.api_key_env>.
        """
        endpoint = url or cfg.url or env.get("OPENAI_API_URL")
        if not endpoint:
            raise UserError(
                "no thinking reward model endpoint: set reward.thinking.url or OPENAI_API_URL "
                "(training starts the built-in server itself when neither is set)"
            )
        source = "reward.thinking.url" if (url or cfg.url) else "OPENAI_API_URL"
        name = model or cfg.model or env.get("REWARD_MODEL") or DEFAULT_MODEL
        return cls(
            normalize_base_url(endpoint, source=source),
            name,
            api_key_env=cfg.api_key_env,
            concurrency=cfg.concurrency,
            timeout=cfg.timeout,
            max_retries=cfg.max_retries,
            constrained=cfg.constrained,
            api_key=api_key,
            env=env,
        )

    def __repr__(self) -> str:
        key = "set" if self._api_key else "unset"
        return (
            f"ThinkingRewardClient(url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r} ({key}), concurrency={self.concurrency}, "
            f"timeout={self.timeout}, max_retries={self.max_retries}, constrained={self.constrained})"
        )

    # ---- scoring ------------------------------------------------------------------------------

    async def score_many(self, samples: Sequence[ThinkingSample]) -> list[ThinkingResult]:
        """Score every sample; results in input order. Never raises for a failed call."""
        state = self._state()
        encoder = ImageEncoder()
        jobs = [self._score_sample(state, encoder, sample) for sample in samples]
        results: list[ThinkingResult] = list(await asyncio.gather(*jobs))
        self._stats.record(results)
        failed = Counter(r.failure for r in results if r.failure)
        if failed:
            kinds = ", ".join(f"{kind}: {n}" for kind, n in failed.most_common())
            logger.warning(
                "thinking RM at %s: %d/%d calls failed (%s)",
                self.base_url,
                sum(failed.values()),
                len(results),
                kinds,
            )
        return results

    def submit(self, samples: Sequence[ThinkingSample]) -> Future[list[ThinkingResult]]:
        """Start scoring on the client's event-loop thread; collect with `.result()` later."""
        return asyncio.run_coroutine_threadsafe(self.score_many(list(samples)), self._background_loop())

    def score_many_sync(self, samples: Sequence[ThinkingSample]) -> list[ThinkingResult]:
        """Blocking `score_many`, for callers without an event loop."""
        return self.submit(samples).result()

    def stats(self, reset: bool = False) -> dict[str, float]:
        """rm/calls, rm/failures, rm/failures/<kind>, rm/retries, rm/latency_p50, rm/latency_p95."""
        return self._stats.snapshot(reset=reset)

    async def _score_sample(
        self, state: _LoopState, encoder: ImageEncoder, sample: ThinkingSample
    ) -> ThinkingResult:
        try:
            urls = await encoder.urls(sample.images)
        except (OSError, ValueError, Image.DecompressionBombError) as exc:  # one bad file fails one call
            logger.warning("thinking RM: an image of a sample cannot be read (%s)", type(exc).__name__)
            return ThinkingResult(score=None, failure="bad_image", attempts=0, latency_s=0.0)
        return await self._score_one(state, self._request_body(build_messages(sample, urls)))

    async def _score_one(self, state: _LoopState, body: bytes) -> ThinkingResult:
        start: float | None = None
        attempts = 0
        while True:
            async with state.semaphore:
                if start is None:
                    start = time.perf_counter()
                attempts += 1
                attempt = await self._attempt(state, body)
            elapsed = time.perf_counter() - start
            if attempt.failure is None:
                return ThinkingResult(attempt.score, None, attempts, elapsed)
            retry = attempt.failure in RETRYABLE and attempts <= self.max_retries
            logger.debug(
                "thinking RM attempt %d failed: %s%s%s",
                attempts,
                attempt.failure,
                f" ({attempt.detail})" if attempt.detail else "",
                "; retrying" if retry else "",
            )
            if not retry:
                return ThinkingResult(None, attempt.failure, attempts, elapsed)
            await asyncio.sleep(self._backoff(attempts, attempt.retry_after))

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Full jitter: uniform(0, min(cap, base * 2^(n-1))); a server's Retry-After is a floor."""
        delay = random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.backoff_max))
        return delay

    async def _attempt(self, state: _LoopState, body: bytes) -> Attempt:
        try:
            async with state.session.post(
                f"{self.base_url}/chat/completions",
                data=body,
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                raw = await response.read()
                status, retry_after = response.status, response.headers.get("Retry-After")
        except (asyncio.TimeoutError, TimeoutError):  # aiohttp's own timeouts subclass these
            return Attempt(failure="timeout")
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            return Attempt(failure="connection", detail=self._redact(f"{type(exc).__name__}: {exc}"))
        text = raw.decode("utf-8", errors="replace")
        if status >= 300:
            return attempt_from_status(status, retry_after, text, self._redact)
        try:
            reply = json.loads(text)
        except ValueError:
            return Attempt(failure="bad_response", detail="the body is not JSON")
        return attempt_from_reply(reply, self._redact)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": _JSON, "Accept": _JSON}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        return headers

    def _request_body(self, messages: list[dict[str, Any]]) -> bytes:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        if self.constrained:
            body["structured_outputs"] = {"choice": list(SCORE_CHOICES)}
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    # ---- health -------------------------------------------------------------------------------

    async def ahealth_check(self) -> list[str]:
        """The served model names; a one-line `UserError` when unreachable or the model is not served."""
        state = self._state()
        try:
            async with state.session.get(
                f"{self.base_url}/models",
                headers=self._headers(),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                raw = await response.read()
                code = response.status
        except (asyncio.TimeoutError, TimeoutError):
            raise self._unreachable("timed out") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError):
            raise self._unreachable("connection failed") from None
        if code in (401, 403):
            hint = (
                f"set ${self.api_key_env} to the server's key"
                if self._api_key
                else f"set ${self.api_key_env}"
            )
            raise UserError(
                f"reward model endpoint {self.base_url} refused the API key (HTTP {code}); {hint}"
            )
        served = _model_ids(raw) if code == 200 else None
        if served is None:
            raise UserError(
                f"reward model endpoint {self.base_url} answered HTTP {code} to GET /models without a model list; "
                "point reward.thinking.url / OPENAI_API_URL at an OpenAI-compatible base URL (ending in /v1)"
            )
        if self.model not in served:
            raise UserError(
                f"reward model {self.model!r} is not served at {self.base_url}; it serves: "
                f"{', '.join(served) or 'no models'}; set REWARD_MODEL or reward.thinking.model to one of them"
            )
        return served

    def health_check(self) -> list[str]:
        """Blocking `ahealth_check`, run on the client's event-loop thread."""
        return asyncio.run_coroutine_threadsafe(self.ahealth_check(), self._background_loop()).result()

    def _unreachable(self, what: str) -> UserError:
        return UserError(
            f"reward model endpoint {self.base_url} is unreachable ({what}); start a server with "
            "`sophiavl serve-reward MODEL` or fix reward.thinking.url / OPENAI_API_URL"
        )

    # ---- lifecycle ----------------------------------------------------------------------------

    def _state(self) -> _LoopState:
        """This loop's HTTP session and semaphore, created on first use (both are loop-bound)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for key in [k for k, s in self._states.items() if s.loop.is_closed()]:
                del self._states[key]
            state = self._states.get(id(loop))
            if state is None or state.loop is not loop:
                connector = aiohttp.TCPConnector(limit=self.concurrency, limit_per_host=self.concurrency)
                session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
                state = self._states[id(loop)] = _LoopState(loop, session, self.concurrency)
            return state

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="sophiavl-rm-client", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def aclose(self) -> None:
        """Close the HTTP session of the running loop (for callers that await `score_many` themselves)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.pop(id(loop), None)
        if state is not None:
            await state.session.close()

    async def _shutdown(self) -> None:
        """Cancel calls nobody will collect (a step abandoned by an error), then close the session."""
        current = asyncio.current_task()
        pending = [task for task in asyncio.all_tasks() if task is not current]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        await self.aclose()

    def close(self) -> None:
        """Close the HTTP session and stop the event-loop thread; safe to call twice."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    def __enter__(self) -> ThinkingRewardClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _model_ids(raw: bytes) -> list[str] | None:
    """The ids of an OpenAI `GET /models` list, or None when the body is not one."""
    try:
        data = json.loads(raw)["data"]
        return [str(item["id"]) for item in data]
    except (ValueError, KeyError, TypeError):
        return None
