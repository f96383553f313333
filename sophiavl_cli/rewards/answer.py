"""Answer checkers, one per built-in question type: (answer, ground truth) -> score in [0, 1].

Both strings arrive already extracted from `<answer>` tags and stripped of `$`; the format gate
and the type dispatch live in `rewards/outcome.py`. The scoring libraries (sympy via mathruler,
math-verify, jiwer, rouge-score/nltk) are imported on first use, so importing this module is cheap.
Decisions that differ from the released code, each covered by tests/test_outcome_rewards.py and
listed in docs/rewards.md:
- an empty answer scores 0 for every type (released OCR gave exp(-1) = 0.37 for nothing);
- `%` is dropped before numerical comparison (`50%` equals `50`, not `0.5`), so mathruler and
  math-verify (which reads `50%` as 0.5) cannot disagree;
- math-verify is asked when mathruler says no and either side has LaTeX or a fraction, so
  `\\sqrt{2}` matches `1.41421356` and `2/4` matches `1/2` (mathruler wants reduced fractions),
  except for forms it would evaluate without end (nested powers, factorials, binomials);
- multiple choice compares option-letter sets exactly (released: a substring test that accepted
  `A` for `AB`);
- ROUGE tokenizes letters of every script (released: a-z/0-9 only, so a Chinese answer always
  scored 0); ASCII text gets exactly rouge-score's tokens, Porter stemming included.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable
from typing import Any

from sophiavl_cli.rewards.deadline import call_with_deadline

NUMERIC_TIMEOUT_S = 5.0
"""Default limit for one numerical comparison (sympy can hang on adversarial expressions)."""

# ----------------------------------------------------------------------------- numerical

_PERCENT = re.compile(r"\\?%")
_FALLBACK_HINTS = ("\\", "^", "{", "/")  # LaTeX or a fraction: mathruler rejects unreduced 2/4


class _DropTimeoutDisabledWarning(logging.Filter):
    """math-verify warns that its timeout is off; ours (rewards/deadline.py) is on instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Timeout is disabled")


@functools.cache
def _grade_answer() -> Callable[[str, str], bool]:
    from mathruler.grader import grade_answer

    return grade_answer


@functools.cache
def _math_verify() -> Any:
    import math_verify

    for name in ("math_verify.grader", "math_verify.parser"):
        logging.getLogger(name).addFilter(_DropTimeoutDisabledWarning())
    return math_verify


# math-verify evaluates these with sympy/gmpy in C, where no timeout can stop it (10^{10^{10}}
# never returns): nested or chained powers, 4+ digit exponents, factorials, binomials.
_UNSAFE_FOR_MATH_VERIFY = re.compile(
    r"\^\s*[{(][^{}()]*\^|\^\s*\w+\s*\^|\^\s*[{(]?\s*\d{4,}|!|\\[dt]?binom|\\choose"
)


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify on `$...$`-wrapped strings, with its signal-based timeout switched off."""
    if _UNSAFE_FOR_MATH_VERIFY.search(pred) or _UNSAFE_FOR_MATH_VERIFY.search(gold):
        return False
    mv = _math_verify()
    gold_parsed = mv.parse(f"${gold}$", parsing_timeout=None)
    pred_parsed = mv.parse(f"${pred}$", parsing_timeout=None)
    return bool(gold_parsed and pred_parsed and mv.verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _numbers_equal(pred: str, gold: str) -> bool:
    # Both libraries parse arbitrary model output; an exception from their parsers means "no match".
    try:
        if _grade_answer()(pred, gold):
            return True
        if any(hint in pred or hint in gold for hint in _FALLBACK_HINTS):
            return _math_verify_equal(pred, gold)
    except Exception:
        return False
    return False


def numerical_score(answer: str, truth: str, *, timeout: float | None = NUMERIC_TIMEOUT_S) -> float:
    """1.0 when mathruler's grader (or math-verify, for LaTeX forms) finds the values equal.

    Units mathruler knows (`5 cm`), thousands separators and `\\text{}` wrappers are ignored; a
    comparison that runs past `timeout` seconds scores 0.
    """
    pred, gold = _PERCENT.sub("", answer).strip(), _PERCENT.sub("", truth).strip()
    return 1.0 if equivalent(pred, gold, timeout=timeout) else 0.0


def equivalent(answer: str, truth: str, *, timeout: float | None = NUMERIC_TIMEOUT_S) -> bool:
    """The one math-equivalence check of rewards and eval: mathruler, then math-verify, time-limited.

    Empty sides are never equal; a comparison that runs past `timeout` seconds is "not equal".
    """
    pred, gold = answer.strip(), truth.strip()
    if not pred or not gold:
        return False
    return _numbers_equal_within(pred, gold, timeout)


@functools.lru_cache(maxsize=4096)
def _numbers_equal_within(pred: str, gold: str, timeout: float | None) -> bool:
    # Cached: the rollouts of one prompt often give the same answer, and sympy costs milliseconds.
    return bool(call_with_deadline(lambda: _numbers_equal(pred, gold), timeout))


# ----------------------------------------------------------------------------- multiple choice

_CHOICE_PREFIX = re.compile(
    r"^(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)s?(?:\s+is|\s+are)?\s*[:：]?\s*", re.I
)
_CHOICE_ITEM = re.compile(
    r"(?:\((?P<paren>[A-Za-z])\)|\[(?P<bracket>[A-Za-z])\]|(?P<bare>[A-Za-z])(?:[.:：)]|(?=\s*$)))(?:\s*.*)?",
    re.DOTALL,
)
_CHOICE_SEPARATOR = re.compile(r"\s*(?:[,;/&、，]|\band\b)\s*|\s+", re.I)
_LETTER_RUN = re.compile(r"[A-H]{2,}")  # "AC"; not "NO", which is compared as text
_LATEX_WRAPPER = re.compile(r"\\(?:boxed|text|textbf|mathrm|mathbf)\s*\{(.*)\}", re.DOTALL)


def _choice_item(text: str) -> str | None:
    """`B`, `b`, `(B)`, `[B]`, `B.`, `B)`, `B:`, `B. 40`, `(B) 40` -> 'B'; anything else -> None."""
    match = _CHOICE_ITEM.fullmatch(text)
    if match is None:
        return None
    return (match.group("paren") or match.group("bracket") or match.group("bare")).upper()


def option_letters(text: str) -> frozenset[str] | None:
    """The set of option letters an answer names, or None when it names none.

    Example:
        >>> sorted(option_letters("Option C, a"))
        ['A', 'C']
        >>> option_letters("A cat") is None
        True
    """
    text = text.strip().strip("*").strip()
    while (wrapped := _LATEX_WRAPPER.fullmatch(text)) is not None:  # \boxed{B}, \text{(B)}
        text = wrapped.group(1).strip()
    text = _CHOICE_PREFIX.sub("", text).rstrip(".").strip()
    if not text:
        return None
    if _LETTER_RUN.fullmatch(text) and len(set(text)) == len(text):  # "AC": a multi-select written solid
        return frozenset(text)
    parts = [part for part in _CHOICE_SEPARATOR.split(text) if part]
    letters = [_choice_item(part) for part in parts]
    if letters and all(letter is not None for letter in letters):
        return frozenset(letter for letter in letters if letter is not None)
    whole = _choice_item(text)  # one option with its text, the text containing separators: "B. 4, 5"
    return frozenset({whole}) if whole else None


def _plain_text(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def choice_score(answer: str, truth: str) -> float:
    """1.0 when the answer names exactly the ground truth's option letters, in any order.

    A ground truth that names no letter (the option text itself) is compared as text instead:
    case-folded, whitespace collapsed, a final period ignored.
    """
    gold = option_letters(truth)
    if gold is None:
        return 1.0 if _plain_text(answer) and _plain_text(answer) == _plain_text(truth) else 0.0
    return 1.0 if option_letters(answer) == gold else 0.0


# ----------------------------------------------------------------------------- OCR


@functools.cache
def _wer() -> Callable[[str, str], float]:
    import jiwer

    return jiwer.wer


def ocr_score(answer: str, truth: str) -> float:
    """exp(-WER(truth, answer)) over whitespace-separated words; case and punctuation count."""
    if not answer.strip() or not truth.strip():
        return 0.0
    return math.exp(-_wer()(truth, answer))


# ----------------------------------------------------------------------------- free-form / text

# One token per CJK ideograph, kana or hangul syllable; other letters and digits form words.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class _AnyScriptTokenizer:
    """rouge-score's default tokenizer, extended from a-z/0-9 to every script.

    For ASCII text the tokens equal rouge-score's: lowercase runs of letters and digits, tokens
    longer than 3 characters Porter-stemmed (nltk's stemmer, as rouge-score uses).
    """

    def __init__(self) -> None:
        from nltk.stem import porter

        self._stem = functools.lru_cache(maxsize=65536)(porter.PorterStemmer().stem)

    def tokenize(self, text: str) -> list[str]:
        words = _WORD.findall(text.lower())
        return [self._stem(word) if len(word) > 3 and word.isascii() else word for word in words]


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_AnyScriptTokenizer())


def rouge_score(answer: str, truth: str) -> float:
    """Mean of the ROUGE-1, ROUGE-2 and ROUGE-L F1 scores of the answer against the truth."""
    if not answer.strip() or not truth.strip():
        return 0.0
    scores = _rouge_scorer().score(truth, answer)
    return sum(score.fmeasure for score in scores.values()) / len(scores)
