"""Read a score in [0, 1] out of a thinking-reward-model reply.

Departure from the released code: it took the first standalone `0`/`1`/`0.d` it found, so "0.75"
read as 0, and any reply it could not read became a score of 0. Here any decimal is read, a value
outside [0, 1] is `out_of_range`, and a reply with no score is `unparseable`: both are failures
the caller handles (the group falls back to outcome-only rewards), never a silent 0.

Accepted forms, tried in order: `<answer>0.75</answer>` (a missing closing tag is tolerated:
replies cut by max_tokens), `\\boxed{0.7}`, and a reply that is nothing but a number.

A reward model that thinks in a block of its own first (Qwen3 and Qwen3.5 models write
`<think>...</think>` before their reply) is read after its last `</think>`: what it wrote while
thinking, `<answer>` tags included, is not its verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The eleven scores the RM was fine-tuned to give; constrained decoding picks one of these replies.
SCORES: tuple[str, ...] = ("0", "0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0")
SCORE_CHOICES: tuple[str, ...] = tuple(f"<answer>{s}</answer>" for s in SCORES)

_NUMBER = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_ANSWER_TAG = re.compile(r"<answer>(.*?)(?:</answer>|$)", re.DOTALL | re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_ONLY_NUMBER = re.compile(rf"^\s*({_NUMBER})\s*\.?\s*$")

_THINK_END = "</think>"

UNPARSEABLE = "unparseable"
OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class ParsedScore:
    """A score in [0, 1], or the reason there is none (`unparseable` | `out_of_range`)."""

    score: float | None
    failure: str | None


def _candidate(text: str) -> str | None:
    """The part of the reply that should hold the number, by the first form that matches."""
    text = text.rpartition(_THINK_END)[2]  # the verdict follows the model's own thinking, if any
    for pattern in (_ANSWER_TAG, _BOXED):
        match = pattern.search(text)
        if match:
            return match.group(1)
    return text


def parse_score(text: str | None) -> ParsedScore:
    """Parse one reply.

    Example:
        >>> parse_score("<answer>0.75</answer>")
        ParsedScore(score=0.75, failure=None)
        >>> parse_score("1.7").failure
        'out_of_range'
    """
    if not text or not text.strip():
        return ParsedScore(None, UNPARSEABLE)
    candidate = _candidate(text)
    match = _ONLY_NUMBER.match(candidate or "")
    if match is None:
        return ParsedScore(None, UNPARSEABLE)
    value = float(match.group(1))
    if not 0.0 <= value <= 1.0:
        return ParsedScore(None, OUT_OF_RANGE)
    return ParsedScore(value, None)
