"""Pure answer-matching helpers shared by the benchmark scorers.

Nothing here evaluates text as code: list literals in data fields (`"['a', 'b']"`) are read by
`parse_list_literal` (`ast.literal_eval`) and numbers by `parse_number`, never by `eval()`.

- `answer_text`: what the model answered. The paper scored the content of `<answer>...</answer>`;
  without the tags, any `<think>` block is dropped and the rest is the answer.
- `can_infer*`: VLMEvalKit's option matching (`vlmeval/utils/matching_util.py`): an option
  letter standing alone in the text, else exactly one option text inside it.
- `yes_no`: VLMEvalKit's `YOrN_Extraction` for MME.
"""

from __future__ import annotations

import ast
import re
import string
from collections.abc import Mapping, Sequence

from rapidfuzz.distance import Levenshtein

_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_OPEN_ANSWER = re.compile(r"<answer>(.*)$", re.DOTALL | re.IGNORECASE)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\**\(?([A-Z])\)?\**", re.IGNORECASE)


def answer_text(response: str) -> str:
    """The answer part of a response: the last `<answer>` content, else the text outside `<think>`.

    Example:
        >>> answer_text("<think>2+2</think><answer> 4 </answer>")
        '4'
    """
    tagged = _ANSWER_TAG.findall(response)
    if tagged:
        return tagged[-1].strip()
    unclosed = _OPEN_ANSWER.search(response)
    if unclosed:  # cut by max_new_tokens after the opening tag
        return unclosed.group(1).strip()
    outside = _THINK.sub("", response).strip()
    return outside if outside else response.strip()


def boxed_content(text: str) -> str | None:
    """Brace-matched content of the last `\\boxed{...}`, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth = 0
    begin = start + len("\\boxed{")
    for pos in range(begin, len(text)):
        char = text[pos]
        if char == "{":
            depth += 1
        elif char == "}":
            if depth == 0:
                return text[begin:pos].strip()
            depth -= 1
    return None


def short_answer(text: str) -> str:
    """A rule-only guess at the final answer inside an answer text: boxed content, else the last line."""
    boxed = boxed_content(text)
    if boxed is not None:
        return boxed
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


def parse_number(text: str) -> float | None:
    """`float` of a bare number (thousands commas and a trailing `%`/`.` allowed), else None."""
    cleaned = text.strip().rstrip(".").replace(",", "").strip()
    if cleaned.endswith("%"):
        cleaned = cleaned[:-1]
    if not cleaned or not _NUMBER.fullmatch(cleaned):
        return None
    try:
        return float(cleaned)
    except ValueError:
        return None


def last_number(text: str) -> float | None:
    """The last number written in `text` (for rule-only numeric extraction), else None."""
    found = _NUMBER.findall(text)
    return parse_number(found[-1]) if found else None


def parse_list_literal(text: str) -> list[str] | None:
    """Items of a Python/JSON list literal of strings or numbers, read by `ast.literal_eval`.

    Returns None when `text` is not such a list (bare names included, as the reference scorers'
    `eval` would fail on them too).

    Example:
        >>> parse_list_literal("['24/7', \\"it's\\", 3]")
        ['24/7', "it's", '3']
    """
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, list) or not all(isinstance(item, str | int | float) for item in value):
        return None
    return [str(item) for item in value]


def letters(count: int) -> list[str]:
    """The first `count` option letters: A, B, C, ..."""
    return list(string.ascii_uppercase[:count])


def _option_tokens(answer: str) -> list[str]:
    cleaned = answer
    for char in ".()[],:;!*#{}":
        cleaned = cleaned.replace(char, " ")
    return cleaned.split()


def can_infer_option(answer: str, options: Mapping[str, str]) -> str | None:
    """The one option letter written as a word in `answer` (VLMEvalKit `can_infer_option`).

    A letter counts when it stands alone after punctuation is blanked. With several letters in
    the text, "the answer is (B)" or a single distinct letter among the last 5 words decides.
    """
    tokens = _option_tokens(answer)
    found = [key for key in options if key in tokens]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        stated = _ANSWER_IS.findall(answer)
        if stated and stated[-1].upper() in options:
            return stated[-1].upper()
        tail = {token for token in tokens[-5:] if token in options}
        if len(tail) == 1:
            return tail.pop()
    return None


def can_infer_text(answer: str, options: Mapping[str, str]) -> str | None:
    """The one option whose text appears in `answer` (case-insensitive), else None."""
    lowered = answer.lower()
    total = sum(len(str(text)) for text in options.values())
    if total and len(answer) > 2 * total + 20:
        return None  # a long reasoning text mentions many options; text matching would guess
    found = [key for key, text in options.items() if str(text).strip() and str(text).lower() in lowered]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, options: Mapping[str, str]) -> str | None:
    """Option letter of `answer`: a standalone letter first, then option text, else None."""
    return can_infer_option(answer, options) or can_infer_text(answer, options)


def most_similar(text: str, choices: Sequence[str]) -> str:
    """The choice closest to `text` by edit distance (first one on ties), as MathVista's scorer does."""
    return min(choices, key=lambda choice: Levenshtein.distance(text, choice))


def process_punctuation(text: str) -> str:
    """Punctuation to spaces (keeps decimal points and commas inside numbers), as in VQA eval."""
    out = re.sub(r"(?<!\d)[.,](?!\d)", " ", text)
    return re.sub(r"[;/\[\]\"{}()=+\\_\-><@`?!*:']", " ", out)


def yes_no(response: str) -> str:
    """`Yes`, `No` or `Unknown`: yes-only or no-only wording decides (VLMEvalKit `YOrN_Extraction`)."""
    words = process_punctuation(response.lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return "Unknown"


def math_equal(prediction: str, gold: str) -> bool:
    """Rule equivalence of two math answers: text, then numbers (|a-b| < 1e-6), then mathruler.

    mathruler's `grade_answer` handles LaTeX fractions, roots, units and tuples; it stands in for
    the `latex2sympy` step of MathVision's official `is_equal`.
    """
    pred, ref = prediction.strip(), gold.strip()
    if not pred:
        return False
    if pred.lower() == ref.lower():
        return True
    a, b = parse_number(pred), parse_number(ref)
    if a is not None and b is not None:
        return abs(a - b) < 1e-6
    from mathruler.grader import grade_answer

    try:
        return bool(grade_answer(pred, ref))
    except Exception:  # sympy can raise almost anything on odd input; a failed check is "not equal"
        return False
