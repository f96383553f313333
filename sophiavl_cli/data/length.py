"""Token counts with a ceiling: a prompt's length up to a limit, without tokenizing a huge row.

Checking or length-filtering a 50 MB prompt by tokenizing it cost ~10 GB (a fast tokenizer keeps
ids, offsets and token strings per token). Only "does it fit?" matters past the limit, and a
token never covers more characters than the longest string in the vocabulary, so a text longer
than `(limit + 1) x that` characters is over the limit without being tokenized; shorter texts are
counted exactly, at a memory cost bounded by the limit. A text under that ceiling can still be
far over the limit (a megabyte of prose is ~250k tokens, seconds of tokenizing): it is counted a
piece at a time, cut at whitespace, and the count stops as soon as the pieces are over the limit
by more than a cut can add, so the work is bounded by the limit, not by the text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

_LONGEST: dict[int, int] = {}


def longest_token_chars(tokenizer: Any) -> int:
    """Characters in the vocabulary's longest token (added tokens included), cached per tokenizer."""
    key = id(tokenizer)
    if key not in _LONGEST:
        _LONGEST[key] = max((len(token) for token in tokenizer.get_vocab()), default=1) or 1
    return _LONGEST[key]


def char_ceiling(tokenizer: Any, limit: int) -> int:
    """Texts longer than this many characters have more than `limit` tokens."""
    return (limit + 1) * longest_token_chars(tokenizer)


PIECE_CHARS = 16_384  # a long text is counted in pieces of about this many characters
CUT_SLACK = 4  # tokens a cut at whitespace can add at most (merges across it are lost)


def capped_token_count(tokenizer: Any, text: str, limit: int) -> int:
    """The exact token count of `text` when it can be at most `limit`; else `limit + 1` ("over")."""
    if len(text) > char_ceiling(tokenizer, limit):
        return limit + 1
    if len(text) > 2 * PIECE_CHARS:
        counted = 0
        for cuts, piece in enumerate(_pieces(text)):
            counted += len(tokenizer.encode(piece, add_special_tokens=False))
            if counted - CUT_SLACK * cuts > limit:
                return limit + 1
    return len(tokenizer.encode(text, add_special_tokens=False))


def _pieces(text: str) -> Iterator[str]:
    """`text` in consecutive pieces of about PIECE_CHARS, each cut before a whitespace when one is near."""
    start = 0
    while start < len(text):
        end = min(start + PIECE_CHARS, len(text))
        if end < len(text):
            space = max(
                text.rfind(" ", start + PIECE_CHARS // 2, end),
                text.rfind("\n", start + PIECE_CHARS // 2, end),
            )
            end = space if space > start else end
        yield text[start:end]
        start = end
