"""How one thinking-reward call ends: a score in [0, 1] or a named failure, never a made-up 0.

`Attempt` is one HTTP attempt; `ThinkingResult` is the sample's final answer after retries.
Only the kinds in `RETRYABLE` are worth another attempt: the rest would fail the same way again
(a refused key, a malformed request, or, under greedy decoding, the same unreadable reply).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sophiavl_cli.rewards.score_parse import parse_score

RETRYABLE = frozenset({"timeout", "connection", "http_429", "http_5xx"})
FAILURE_KINDS = (
    "timeout",
    "connection",
    "http_429",
    "http_5xx",
    "http_4xx",
    "bad_response",
    "unparseable",
    "out_of_range",
    "bad_image",
)


@dataclass(frozen=True)
class ThinkingResult:
    """The outcome of one sample: a score in [0, 1] or a failure kind (exactly one is set).

    Failure kinds (`FAILURE_KINDS`): timeout, connection, http_429, http_5xx, http_4xx,
    bad_response (a reply that is not a chat completion), unparseable, out_of_range, bad_image.
    `latency_s` runs from the first attempt's send to the final answer, backoff included.
    """

    score: float | None
    failure: str | None
    attempts: int
    latency_s: float

    @property
    def ok(self) -> bool:
        return self.failure is None


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt: a score, or a failure with an optional server-requested wait."""

    score: float | None = None
    failure: str | None = None
    retry_after: float | None = None
    detail: str = ""


def attempt_from_reply(reply: object, redact: Callable[[str], str]) -> Attempt:
    """Score a 2xx reply: choices[0].message.content parsed, or `bad_response` for a non-completion."""
    try:
        text = reply["choices"][0]["message"]["content"]  # type: ignore[index]
    except (KeyError, IndexError, TypeError):
        text = None
    if not isinstance(text, str):
        return Attempt(failure="bad_response", detail="not a chat completion")
    parsed = parse_score(text)
    return Attempt(score=parsed.score, failure=parsed.failure, detail=redact(text[:80]))


def attempt_from_status(
    status: int, retry_after: str | None, body: str, redact: Callable[[str], str]
) -> Attempt:
    """A non-2xx answer: 429 (with its numeric Retry-After, in seconds), 5xx, or any other 4xx."""
    detail = redact(f"HTTP {status}: {body[:120]}")
    if status == 429:
        return Attempt(failure="http_429", retry_after=_seconds(retry_after), detail=detail)
    if status >= 500:
        return Attempt(failure="http_5xx", detail=detail)
    return Attempt(failure="http_4xx", detail=detail)


def _seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header; None when absent or in the HTTP-date form."""
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None
