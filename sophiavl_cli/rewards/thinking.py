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

HTTP goes through `openai.AsyncOpenAI` on its aiohttp transport (`DefaultAioHttpClient`), one
client per event loop (in training: one per run). Retries stay here (`max_retries=0` in the
library) because the failure kinds, backoff and Retry-After floor are ours; the connection pool is
sized to `concurrency`. Requests go through the client's plain `post` (its documented way to call
an endpoint with a raw body, `cast_to=httpx2.Response`) rather than `chat.completions.create`:
the typed call walks every message part, base64 images included, through its TypedDict
transform, which tripled the client's CPU per call (0.17 s against 0.065 s for 128 calls) and,
on a busy machine, doubled the wall time; the raw reply also lets a non-JSON or non-completion
body be classified here (benchmarks/reward_client.py).

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
import httpx2
import openai

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
    from sophiavl_cli.config.reward import ThinkingRewardConfig

__all__ = ["RETRYABLE", "ThinkingResult", "ThinkingRewardClient", "ThinkingSample"]

logger = logging.getLogger(__name__)

# Timeouts are retried once at most, whatever `max_retries` says: a server that answered too slowly
# twice will again, and five more timeouts per call made a step wait ~6 timeouts before the
# failure policy heard of it. Connection errors, 429 and 5xx are quick and keep all their retries.
TIMEOUT_RETRIES = 1

DEFAULT_MODEL = RM_SERVED_NAME


class _LoopState:
    """The parts bound to one event loop: the API client (its aiohttp session) and the semaphore."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: openai.AsyncOpenAI, concurrency: int) -> None:
        self.loop = loop
        self.client = client
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

    def repoint(self, url: str) -> None:
        """Send the next requests (retries of calls in flight included) to `url`: a restarted server."""
        with self._lock:
            self.base_url = normalize_base_url(url)
            for state in self._states.values():
                state.client.base_url = self.base_url

    async def _score_sample(
        self, state: _LoopState, encoder: ImageEncoder, sample: ThinkingSample
    ) -> ThinkingResult:
        try:
            urls = await encoder.urls(sample.images)
        except (OSError, ValueError, UserError) as exc:  # one bad file (a bomb too) fails one call
            logger.warning("thinking RM: an image of a sample cannot be read (%s)", type(exc).__name__)
            return ThinkingResult(score=None, failure="bad_image", attempts=0, latency_s=0.0)
        return await self._score_one(state, self._request_body(build_messages(sample, urls)))

    async def _score_one(self, state: _LoopState, body: dict[str, Any]) -> ThinkingResult:
        start: float | None = None
        attempts = timeouts = 0
        while True:
            async with state.semaphore:
                if start is None:
                    start = time.perf_counter()
                attempts += 1
                attempt = await self._attempt(state, body)
            elapsed = time.perf_counter() - start
            if attempt.failure is None:
                return ThinkingResult(attempt.score, None, attempts, elapsed)
            timeouts += attempt.failure == "timeout"
            retry = (
                attempt.failure in RETRYABLE
                and attempts <= self.max_retries
                and timeouts <= TIMEOUT_RETRIES  # a server slower than the timeout stays slower
            )
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

    async def _attempt(self, state: _LoopState, body: dict[str, Any]) -> Attempt:
        try:
            response = await state.client.post(
                "/chat/completions", body=body, cast_to=httpx2.Response, options=self._options()
            )
            content = response.content
        except (openai.APIConnectionError, httpx2.HTTPError) as exc:  # timeouts included; the
            # httpx2 errors are those raised while the body is read, outside the library's wrapping
            kind, cause = _transport_failure(exc)
            return Attempt(failure=kind, detail=self._redact(f"{type(cause).__name__}: {cause}"))
        except openai.APIStatusError as exc:
            response = exc.response
            return attempt_from_status(
                response.status_code, response.headers.get("Retry-After"), response.text, self._redact
            )
        try:
            reply = json.loads(content)
        except ValueError:
            return Attempt(failure="bad_response", detail="the body is not JSON")
        return attempt_from_reply(reply, self._redact)

    def _request_body(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": 0.0,
            "max_tokens": self.max_tokens,
        }
        if self.constrained:
            body["structured_outputs"] = {"choice": list(SCORE_CHOICES)}
        return body

    # ---- health -------------------------------------------------------------------------------

    async def ahealth_check(self) -> list[str]:
        """The served model names; a one-line `UserError` when unreachable or the model is not served."""
        state = self._state()
        try:
            response = await state.client.get("/models", cast_to=httpx2.Response, options=self._options())
            raw, code = response.content, response.status_code
        except (openai.APIConnectionError, httpx2.HTTPError) as exc:
            kind, _ = _transport_failure(exc)
            raise self._unreachable("timed out" if kind == "timeout" else "connection failed") from None
        except openai.APIStatusError as exc:
            raw, code = exc.response.content, exc.status_code
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
        """This loop's API client and semaphore, created on first use (both are loop-bound)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for key in [k for k, s in self._states.items() if s.loop.is_closed()]:
                del self._states[key]
            state = self._states.get(id(loop))
            if state is None or state.loop is not loop:
                state = self._states[id(loop)] = _LoopState(loop, self._new_client(), self.concurrency)
            return state

    def _new_client(self) -> openai.AsyncOpenAI:
        """An API client with our retries (none in the library) and a pool as large as `concurrency`."""
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        return openai.AsyncOpenAI(
            api_key=self._api_key or "unused",  # never sent: `_options` omits the header then
            base_url=self.base_url,
            max_retries=0,
            timeout=self.timeout,
            http_client=openai.DefaultAioHttpClient(limits=limits, timeout=self.timeout),
        )

    def _background_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="sophiavl-rm-client", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
            return self._loop

    async def aclose(self) -> None:
        """Close the API client of the running loop (for callers that await `score_many` themselves)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            state = self._states.pop(id(loop), None)
        if state is not None:
            await state.client.close()

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

    def _options(self) -> dict[str, Any]:
        """Per-request headers: without a key no Authorization at all (not the placeholder), and
        never the OpenAI organisation/project ids the library would read from the environment."""
        headers: dict[str, Any] = {"OpenAI-Organization": openai.omit, "OpenAI-Project": openai.omit}
        if not self._api_key:
            headers["Authorization"] = openai.omit
        return {"headers": headers}

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text


def _transport_failure(exc: BaseException) -> tuple[str, BaseException]:
    """The failure kind, "timeout" or "connection", judged by the aiohttp error behind `exc`.

    The aiohttp transport reports any `aiohttp.ClientConnectionError` (a dropped connection
    included) as a connect timeout, so the library's exception class alone would call a server
    that hung up a timeout.
    """
    chain: list[BaseException] = [exc]
    while (nxt := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 16:
        chain.append(nxt)
    for cause in chain:
        if isinstance(cause, aiohttp.ClientError):  # aiohttp's own timeouts subclass TimeoutError
            return ("timeout" if isinstance(cause, TimeoutError) else "connection"), cause
    if any(isinstance(cause, TimeoutError) for cause in chain):
        return "timeout", chain[-1]
    timed_out = isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException)
    return ("timeout" if timed_out else "connection"), chain[-1]


def _model_ids(raw: bytes) -> list[str] | None:
    """The ids of an OpenAI `GET /models` list, or None when the body is not one."""
    try:
        data = json.loads(raw)["data"]
        return [str(item["id"]) for item in data]
    except (ValueError, KeyError, TypeError):
        return None
