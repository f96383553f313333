"""An optional LLM judge over any OpenAI-compatible `/chat/completions` endpoint.

MathVista, MathVerse and MathVision's official scorers ask GPT to extract (and, for MathVerse,
grade) the answer. `Judge.ask` is that call: thread-safe, cached, retried. The scoring layer runs
it from a bounded thread pool, so at most `concurrency` requests are in flight.

- Retries: up to `max_retries` tries, temperature `i * 0.5` on the i-th (as VLMEvalKit), a short
  backoff between; connection errors, 429/5xx and empty replies are retried; after the last try a
  one-line error (the cache keeps every answer received so far, so a rerun resumes).
- Cache: JSONL beside the predictions, keyed by sha256 of (judge model, prompt); a judged item
  is never sent twice. Replies are stored, the API key never is.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        import httpx

        self.settings = settings
        url = settings.base_url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(settings.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(timeout=settings.timeout_s, headers=headers)
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
        import httpx

        problem = "no reply"
        for attempt in range(self.settings.max_retries):
            body = {
                "model": self.settings.model,
                "messages": [{"role": "user", "content": prompt}],
                "temperature": attempt * 0.5,
                "max_tokens": self.settings.max_tokens,
            }
            try:
                response = self._client.post(self.url, json=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    content = _content(response)
                    if content:
                        return content
                    problem = "empty reply"
                elif response.status_code in (408, 409, 429) or response.status_code >= 500:
                    problem = f"HTTP {response.status_code}"
                else:
                    raise UserError(
                        f"judge {self.settings.model} at {self.url} answered HTTP {response.status_code}; "
                        "check --judge (model name), --judge-url and the API key"
                    )
            time.sleep(min(0.25 * 2**attempt, 8.0))
        raise UserError(
            f"judge {self.settings.model} at {self.url} failed {self.settings.max_retries} times ({problem}); "
            "check the server, then rerun (answers so far are cached)"
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._client.close()


def _content(response: Any) -> str:
    try:
        payload = response.json()
        return str(payload["choices"][0]["message"]["content"] or "").strip()
    except (ValueError, KeyError, IndexError, TypeError):
        return ""


def _read_cache(path: Path) -> dict[str, str]:
    """Cached replies; a line cut short by an interrupted run is skipped."""
    return {
        str(record["key"]): str(record["reply"])
        for record in read_jsonl(path, missing_ok=True)
        if isinstance(record, dict) and "key" in record and "reply" in record
    }
