"""The response format gate and answer extraction, shared by training rewards and evaluation.

A response passes the gate when it starts with `<think>` (leading whitespace allowed) and has a
`</think>`, then an `<answer>...</answer>` later on, anything in between and after (dot-all), as in
the released SophiaVL-R1 reward. `extract_answer` is the one reader of `<answer>` blocks for rewards
and evaluation; each call site names which block it reads (`first` or `last`) and says why.
"""

from __future__ import annotations

from typing import Literal

_THINK, _THINK_END, _ANSWER, _ANSWER_END = "<think>", "</think>", "<answer>", "</answer>"


def passes_format(response: str) -> bool:
    """Whether `response` has the `<think>...</think> ... <answer>...</answer>` shape.

    Equal to a dot-all full match of `<think>.*</think>.*<answer>.*</answer>.*`, but linear: the
    regex backtracks for minutes on a degenerate rollout that repeats `</think><answer>`.
    """
    text = response.lstrip()
    if not text.startswith(_THINK):
        return False
    think_end = text.find(_THINK_END, len(_THINK))
    answer = text.find(_ANSWER, think_end + len(_THINK_END)) if think_end >= 0 else -1
    return answer >= 0 and text.find(_ANSWER_END, answer + len(_ANSWER)) >= 0


def score_format(response: str) -> float:
    """1.0 when the response passes the format gate, else 0.0."""
    return 1.0 if passes_format(response) else 0.0


def extract_answer(text: str, *, which: Literal["first", "last"]) -> str | None:
    """Stripped content of the first or last complete `<answer>...</answer>`, or None when there is none.

    Example:
        >>> extract_answer("<think>2+2</think> <answer> 4 </answer><answer>5</answer>", which="first")
        '4'
        >>> extract_answer("<think>2+2</think> <answer> 4 </answer><answer>5</answer>", which="last")
        '5'
    """
    if which == "first":
        start = text.find(_ANSWER)
        end = text.find(_ANSWER_END, start + len(_ANSWER)) if start >= 0 else -1
        return text[start + len(_ANSWER) : end].strip() if end >= 0 else None
    if which != "last":
        raise ValueError(f"which must be 'first' or 'last', got {which!r}")
    end = text.rfind(_ANSWER_END)
    start = text.rfind(_ANSWER, 0, end) if end >= 0 else -1
    return text[start + len(_ANSWER) : end].strip() if start >= 0 else None


def strip_math_delimiters(text: str) -> str:
    """Drop `$` and `$$` (math markers) and escaped `\\$` (a currency sign), then outer whitespace."""
    return text.replace("\\$", "").replace("$", "").strip()


def ground_truth_answer(ground_truth: str) -> str:
    """The ground truth as compared: the inner text when it is wrapped in `<answer>` tags, no `$`."""
    # first: a ground truth holds one block; this is the reading the released reward used
    inner = extract_answer(ground_truth, which="first")
    return strip_math_delimiters(ground_truth if inner is None else inner)
