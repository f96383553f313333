"""An optional LLM judge over any OpenAI-compatible endpoint, through the `openai` client.

MathVista, MathVerse and MathVision's official scorers ask GPT to extract (and, for MathVerse,
grade) the answer. `Judge.ask` is that call: thread-safe, cached, retried. The scoring layer runs
it from a bounded thread pool, so at most `concurrency` requests are in flight.

- Transport: `openai.OpenAI(base_url=..., timeout=..., max_retries=...)`; the library retries
  connection errors, timeouts, 408/409/429 and 5xx with backoff. Other HTTP errors (a wrong model
  name, a bad key) stop at once with a one-line error.
- Empty replies: asked again up to `max_retries` times at temperature `i * 0.5` (as VLMEvalKit).
- Cache: JSONL beside the predictions, keyed by sha256 of (judge model, prompt); a judged item
  is never sent twice, and a rerun after a failure resumes. The API key is read from the
  environment variable `api_key_env` and is never stored, logged or put in an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import JsonlAppender, read_jsonl

DEFAULT_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class JudgeSettings:
    """Which judge to call and how hard to push it."""

    model: str
    base_url: str = DEFAULT_URL
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = 8
    max_retries: int = 5
    timeout_s: float = 120.0
    max_tokens: int = 256


def cache_key(model: str, prompt: str) -> str:
    """The cache key of one judge request."""
    return hashlib.sha256(json.dumps([model, prompt], ensure_ascii=False).encode("utf-8")).hexdigest()


class Judge:
    """A cached, retrying, thread-safe client for one judge model."""

    def __init__(self, settings: JudgeSettings, cache_path: Path | None = None) -> None:
        import openai

        self.settings = settings
        self.url = settings.base_url.rstrip("/").removesuffix("/chat/completions")
        # a local server (vLLM) wants no key, but the client insists on one
        key = os.environ.get(settings.api_key_env) or "EMPTY"
        self._client = openai.OpenAI(
            base_url=self.url, api_key=key, timeout=settings.timeout_s, max_retries=settings.max_retries
        )
        self._lock = threading.Lock()
        self.cache_path = cache_path
        self._cache: dict[str, str] = _read_cache(cache_path) if cache_path else {}
        self.num_requests = 0
        self.num_cached = 0

    def ask(self, prompt: str) -> str:
        """The judge's reply to `prompt` (from the cache when it was asked before)."""
        key = cache_key(self.settings.model, prompt)
        with self._lock:
            if key in self._cache:
                self.num_cached += 1
                return self._cache[key]
        reply = self._request(prompt)
        with self._lock:
            self._cache[key] = reply
            self.num_requests += 1
            if self.cache_path is not None:
                with JsonlAppender(self.cache_path) as cache:
                    cache.write({"key": key, "model": self.settings.model, "reply": reply})
        return reply

    def _request(self, prompt: str) -> str:
        import openai

        where = f"judge {self.settings.model} at {self.url}"
        for attempt in range(max(1, self.settings.max_retries)):
            try:
                response = self._client.chat.completions.create(
                    model=self.settings.model,
                    messages=[{"role": "user", "content": prompt}],
                    temperature=attempt * 0.5,
                    max_tokens=self.settings.max_tokens,
                )
            except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as exc:
                raise UserError(
                    f"{where} failed after {self.settings.max_retries} retries ({type(exc).__name__}); "
                    "check the server, then rerun (answers so far are cached)"
                ) from None
            except openai.APIStatusError as exc:
                raise UserError(
                    f"{where} answered HTTP {exc.status_code}; check --judge (model name), --judge-url and "
                    f"the API key in ${self.settings.api_key_env}"
                ) from None
            content = (response.choices[0].message.content or "").strip() if response.choices else ""
            if content:
                return content
        raise UserError(
            f"{where} gave {self.settings.max_retries} empty replies; check the model, then rerun "
            "(answers so far are cached)"
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def _read_cache(path: Path) -> dict[str, str]:
    """Cached replies; a line cut short by an interrupted run is skipped."""
    return {
        str(record["key"]): str(record["reply"])
        for record in read_jsonl(path, missing_ok=True)
        if isinstance(record, dict) and "key" in record and "reply" in record
    }
