"""Pure answer-matching rules shared by the benchmark scorers, ported from the official code.

Reference versions (read, not copied; tests/eval_official.py holds line-by-line ports used as the
differential oracle):
- VLMEvalKit at `VLMEVALKIT_COMMIT` (2025-05-24, the harness and period of the SophiaVL-R1 paper):
  `vlmeval/utils/matching_util.py` (`can_infer*`), `vlmeval/smp/misc.py` (`process_punctuation`),
  `vlmeval/dataset/utils/yorn.py` (`YOrN_Extraction`), `utils/mathv.py` (`is_equal`).
  Later VLMEvalKit changed MCQ matching (Aug 2025: a lone letter must sit in the last 5 words and
  option text is not searched in long answers; Jun 2026: an `answer is X` regex with no word
  boundary, which reads "the answer is definitely C" as D), so its MCQ numbers differ from the
  paper's; `lenient=True` is our own, documented reading (docs/eval.md).

Nothing here evaluates text as code: list literals are read by `parse_list_literal` (a small
tokenizer) and the arithmetic VLMEvalKit hands to `eval()` by `safe_arithmetic` (numbers and
operators only).
"""

from __future__ import annotations

import ast
import operator
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from rapidfuzz.distance import Levenshtein

from sophiavl_cli.rewards.answer import NUMERIC_TIMEOUT_S, equivalent
from sophiavl_cli.rewards.deadline import call_with_deadline
from sophiavl_cli.rewards.format import extract_answer

VLMEVALKIT_COMMIT = "095a1efead1d093f5502a300d6cea7d4a9a0ee1c"

_OPEN_ANSWER = re.compile(r"<answer>(.*)$", re.DOTALL)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:[eE][-+]?\d+)?|[-+]?\.\d+")
# VLMEvalKit's refusals: the answer becomes the non-option letter Z (wrong).
_REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
_API_FAILURE = "Failed to obtain answer via API"
# Lenient only: "answer is X" / "answer: X", up to two filler words before a letter that ends the
# phrase ("the answer is definitely C.", "the answer is b"); "the answer is a cat" is not a letter.
_STATED = re.compile(
    r"answer\s*(?:is|:)\s*(?:[A-Za-z]{2,}\s+){0,2}?[(\[*]*([A-Za-z])[)\]*]*(?=\s*(?:$|[.,;:!?\n]))",
    re.IGNORECASE,
)


def answer_text(response: str) -> str:
    """The answer part of a response: the last `<answer>` content, else the text outside `<think>`.

    Example:
        >>> answer_text("<think>2+2</think><answer> 4 </answer>")
        '4'
    """
    # last: the paper scored the model's final answer block; a model that drafts an answer and
    # then corrects itself means the later one
    tagged = extract_answer(response, which="last")
    if tagged is not None:
        return tagged
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
    """`float` of a bare number (thousands commas and a trailing `%`/`.` allowed), else None.

    Looser than Python's `float()` on purpose: rule-mode guessing only, never an official check.
    """
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


def py_int(text: str) -> int | None:
    """Python's `int(text)` (what VLMEvalKit's prefetch calls), None where it raises."""
    try:
        return int(text)
    except (ValueError, TypeError):
        return None


def py_float(text: str) -> float | None:
    """Python's `float(text)`, None where it raises."""
    try:
        return float(text)
    except (ValueError, TypeError):
        return None


def parse_list_literal(text: str) -> list[str] | None:
    """Items of a Python/JSON list literal of strings or numbers, read by `ast.literal_eval`.

    Python literals go through `ast.literal_eval` (escapes such as `\\n` decoded as upstream's
    `eval` would); other bracketed lists (JSON `true`, bare words) through a small tokenizer.
    Returns None when `text` is not a bracketed list.

    Example:
        >>> parse_list_literal("['24/7', \\"it's\\", 3]")
        ['24/7', "it's", '3']
    """
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        value = None
    if isinstance(value, list):
        return [str(item) for item in value]
    body = text[1:-1]
    items: list[str] = []
    pos = 0
    while pos < len(body):
        char = body[pos]
        if char in " \t\n,":
            pos += 1
            continue
        if char in "'\"":
            end = pos + 1
            chars: list[str] = []
            while end < len(body) and body[end] != char:
                if body[end] == "\\" and end + 1 < len(body):
                    end += 1
                chars.append(body[end])
                end += 1
            if end >= len(body):
                return None  # unterminated string
            items.append("".join(chars))
            pos = end + 1
        else:
            end = body.find(",", pos)
            end = len(body) if end < 0 else end
            items.append(body[pos:end].strip())
            pos = end + 1
    return items


def letters(count: int) -> list[str]:
    """The first `count` option letters: A, B, C, ..."""
    return list(string.ascii_uppercase[:count])


# ---------------------------------------------------------------------- options (VLMEvalKit)


def _option_tokens(answer: str) -> list[str]:
    cleaned = answer
    for char in ".()[],:;!*#{}":
        cleaned = cleaned.replace(char, " ")
    return cleaned.split()


def stated_letter(answer: str, options: Mapping[str, str]) -> str | None:
    """Lenient: the option letter after the last "answer is" / "answer:", any case, else None."""
    found = [m.group(1).upper() for m in _STATED.finditer(answer)]
    found = [letter for letter in found if letter in options]
    return found[-1] if found else None


def can_infer_option(answer: str, options: Mapping[str, str], *, lenient: bool = False) -> str | None:
    """VLMEvalKit's `can_infer_option`: the one option letter standing alone as a word.

    After blanking `.()[],:;!*#{}`, exactly one option letter among the words decides; none but a
    `Z` word, or a known refusal, gives `Z` (a wrong answer); several give nothing. `lenient`
    then also reads "the answer is (definitely) c" (see `stated_letter`).
    """
    if _API_FAILURE in answer:
        return None
    if any(refusal in answer for refusal in _REFUSALS):
        return "Z"
    tokens = _option_tokens(answer)
    found = [key for key in options if key in tokens]
    if len(found) == 1 and not (lenient and stated_letter(answer, options) not in (None, found[0])):
        return found[0]
    if not found and "Z" in tokens:
        return "Z"
    return stated_letter(answer, options) if lenient else None


def can_infer_text(answer: str, options: Mapping[str, str], *, lenient: bool = False) -> str | None:
    """VLMEvalKit's `can_infer_text`: the one option whose text is inside the answer (any case).

    `lenient` skips empty option texts and, as later VLMEvalKit does, answers longer than twice
    the options' total length (a long reasoning names many options).
    """
    lowered = answer.lower()
    texts = {key: str(value).lower() for key, value in options.items()}
    if lenient:
        if len(lowered) > 2 * sum(len(value) for value in texts.values()):
            return None
        texts = {key: value for key, value in texts.items() if value.strip()}
    found = [key for key, value in texts.items() if value in lowered]
    return found[0] if len(found) == 1 else None


def can_infer(answer: str, options: Mapping[str, str], *, lenient: bool = False) -> str | None:
    """Option letter of `answer` (VLMEvalKit `can_infer`): a standalone letter, then option text."""
    return can_infer_option(answer, options, lenient=lenient) or can_infer_text(
        answer, options, lenient=lenient
    )


# ---------------------------------------------------------------------- edit distance


def most_similar(text: str, choices: Sequence[str]) -> str:
    """The choice closest to `text` by edit distance (first one on ties), as MathVista's scorer does."""
    return min(choices, key=lambda choice: Levenshtein.distance(text, choice))


# ---------------------------------------------------------------------- yes / no (VLMEvalKit)

_PUNCT = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
_PERIOD_STRIP = re.compile(r"(?<!\d)\.(?!\d)")
# Upstream calls `periodStrip.sub('', text, re.UNICODE)`: the flag lands in `count`, so at most
# 32 periods are removed. Kept for parity.
_PERIOD_COUNT = int(re.UNICODE)


def process_punctuation(text: str) -> str:
    """VLMEvalKit's `process_punctuation` (VQA eval): punctuation removed or blanked, lone periods dropped.

    A mark next to a space (or any mark at all when the text has a digit,digit) is deleted, else
    replaced by a space. `*`, `:`, `'` and `.` between digits are kept.
    """
    out = text
    digit_comma = _COMMA_STRIP.search(text) is not None
    for mark in _PUNCT:
        if mark + " " in text or " " + mark in text or digit_comma:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_COUNT)


_LENIENT_STRIP = re.compile(r"[*:'\"]")


def yes_no(response: str, *, lenient: bool = False) -> str:
    """`Yes`, `No` or `Unknown` (VLMEvalKit `YOrN_Extraction`): yes-only or no-only wording decides.

    `**Yes**` or `Answer:yes` stay Unknown there (the marks are kept); `lenient` drops `*`, `:` and
    quotes first.
    """
    text = response.lower()
    if lenient:
        text = _LENIENT_STRIP.sub(" ", text)
    words = process_punctuation(text).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "Yes"
    if has_no and not has_yes:
        return "No"
    return "Unknown"


# ---------------------------------------------------------------------- math (VLMEvalKit mathv.py)

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitXor: operator.xor,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_MAX_EXPONENT = 10_000


def safe_arithmetic(text: str) -> Any:
    """What Python's `eval` gives for a numbers-and-operators expression; ValueError for anything else.

    VLMEvalKit's MathVision `is_equal` calls `eval()` on answers; this keeps its results for
    arithmetic (`2^3` is XOR there, `1,000` a tuple) without running code. Names, calls and
    attribute access are refused, as are exponents above 10,000 (they would not finish).
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError) as exc:
        raise ValueError(str(exc)) from exc
    return _arith(tree.body)


def _arith(node: ast.AST) -> Any:
    if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, int | float | complex)
        and not isinstance(node.value, bool)
    ):
        return node.value
    if isinstance(node, ast.Tuple):
        return tuple(_arith(element) for element in node.elts)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_arith(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _arith(node.left), _arith(node.right)
        if isinstance(node.op, ast.Pow) and isinstance(right, int | float) and abs(right) > _MAX_EXPONENT:
            raise ValueError("exponent too large")
        return _BINARY[type(node.op)](left, right)
    raise ValueError(f"not arithmetic: {type(node).__name__}")


def _close(a: Any, b: Any) -> bool:
    return bool(abs(a - b) < 1e-6)


def _latex_equal(prediction: str, gold: str) -> bool:
    """The latex2sympy step of `is_equal`: numeric values of both parses within 1e-6."""
    from latex2sympy2_extended import latex2sympy

    a, b = latex2sympy(gold), latex2sympy(prediction)
    if _close(safe_arithmetic(str(a)), safe_arithmetic(str(b))):
        return True
    return _close(a, b)


def is_equal(prediction: str, gold: str, *, timeout: float | None = NUMERIC_TIMEOUT_S) -> bool:
    """VLMEvalKit's MathVision `is_equal`: lowercased text, then arithmetic, then latex2sympy values.

    Each later step runs only when the earlier one fails or raises; the latex step is time-limited
    (upstream: 30 s per item, we use the shared reward limit).
    """
    pred, ref = str(prediction).lower().strip(), str(gold).lower().strip()
    if pred == ref:
        return True
    try:
        if _close(safe_arithmetic(ref), safe_arithmetic(pred)):
            return True
    except Exception:  # upstream catches everything eval() and the subtraction raise
        pass

    def latex() -> bool:
        try:
            return _latex_equal(pred, ref)
        except Exception:  # latex2sympy and sympy raise many kinds on odd input: "not equal"
            return False

    return bool(call_with_deadline(latex, timeout))


def math_equal(prediction: str, gold: str, *, timeout: float | None = NUMERIC_TIMEOUT_S) -> bool:
    """Rule equivalence where no official rule exists (rule-mode guesses, `--lenient`).

    `is_equal`, then the shared reward checker (`rewards.answer.equivalent`: mathruler, then
    math-verify), both time-limited.
    """
    if not prediction.strip():
        return False
    return is_equal(prediction, gold, timeout=timeout) or equivalent(prediction, gold, timeout=timeout)
