"""Token counts with a ceiling: a prompt's length up to a limit, without tokenizing a huge row.

Checking or length-filtering a 50 MB prompt by tokenizing it cost ~10 GB (a fast tokenizer keeps
ids, offsets and token strings per token). Only "does it fit?" matters past the limit, and a
token never covers more characters than the longest string in the vocabulary, so a text longer
than `(limit + 1) x that` characters is over the limit without being tokenized; shorter texts are
counted exactly, at a memory cost bounded by the limit.
"""

from __future__ import annotations

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


def capped_token_count(tokenizer: Any, text: str, limit: int) -> int:
    """The exact token count of `text` when it can be at most `limit`; else `limit + 1` ("over")."""
    if len(text) > char_ceiling(tokenizer, limit):
        return limit + 1
    return len(tokenizer.encode(text, add_special_tokens=False))
