"""MathVista testmini: data, VLMEvalKit's default prompt, the official normalise-and-match scorer.

Scoring, in order:
1. **Prefetch** (VLMEvalKit `utils/mathvista.py::post_check(prefetch=True)`): a multiple-choice
   answer whose option letter `can_infer` finds is settled (right or wrong); an integer/float
   answer is settled only when Python's `int()`/`float()` of the answer text equals the gold
   value. Nothing else is stripped first (`60%` and `1,000` are not numbers here).
2. Otherwise the judge's extraction (`--judge`), or without one our rule guess: the `\\boxed{}`
   content, else the last line, and for numeric items the last number in it (this guess, and only
   it, reads thousands commas and a trailing `%`/`.`). A rule-based score is labelled as such.
3. **Normalise and match** (MathVista `evaluation/calculate_score.py`): a choice letter (upper
   case, or the letter in `(x)`) becomes the choice text, anything else the most similar choice by
   edit distance (an empty extraction included); integers `str(int(float(x)))`, floats
   `str(round(float(x), precision))`, lists `str(x)`; then exact string equality with the gold
   answer as released.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import (
    HF,
    AskJudge,
    Benchmark,
    ImageSource,
    ItemScore,
    Sample,
    list_field,
    option_columns,
    text,
)
from sophiavl_cli.eval.matching import (
    answer_text,
    can_infer,
    last_number,
    letters,
    most_similar,
    parse_number,
    py_float,
    py_int,
    short_answer,
)

_PAREN_LETTER = re.compile(r"\(([a-zA-Z])\)")

# Our own few-shot extraction prompt in the style of the official one (5 demos: integer, float x2,
# list, multiple choice). The judge returns only the final answer.
EXTRACT_INSTRUCTION = (
    "Read the examples, then extract the final answer from the last model response. "
    "Reply with the extracted answer only.\n\n"
)
EXTRACT_DEMOS = (
    "Question: How many red cubes are left after removing two of the five?\n"
    "Model response: Five cubes minus two removed leaves 3 red cubes.\nExtracted answer: 3\n\n"
    "Question: What fraction of the bar is shaded? Answer with one decimal place.\n"
    "Model response: Three of five segments are shaded, so the value is 0.6.\nExtracted answer: 0.6\n\n"
    "Question: What is the slope of the line? Answer with two decimal places.\n"
    "Model response: Rise over run is 2.9/2, which gives a slope of about 1.45.\nExtracted answer: 1.45\n\n"
    "Question: In which years did sales exceed 50 units? Answer with a Python list.\n"
    "Model response: Sales passed 50 in 2011 and again in 2014.\nExtracted answer: [2011, 2014]\n\n"
    "Question: Which shape has the largest area?\nChoices:\n(A) circle\n(B) square\n(C) triangle\n"
    "Model response: Comparing areas, the square is the biggest, so the answer is (B).\n"
    "Extracted answer: B\n\n"
)


def extraction_prompt(query: str, response: str) -> str:
    """The judge prompt asking for the final answer of one response (shared with MathVision)."""
    return f"{EXTRACT_INSTRUCTION}{EXTRACT_DEMOS}{query}\nModel response: {response}\nExtracted answer:"


def _precision(sample: Sample) -> int:
    precision = sample.meta.get("precision")
    number = parse_number(str(precision)) if precision not in (None, "") else None
    if number is not None:
        return int(number)
    decimals = sample.answer.split(".", 1)[1] if "." in sample.answer else ""
    return len(decimals)


def normalize(extraction: str, sample: Sample) -> str | None:
    """The official `normalize_extracted_answer`; None when a number does not parse."""
    extraction = extraction.strip()
    answer_type = sample.meta.get("answer_type", "text")
    if sample.meta.get("question_type") == "multi_choice" and sample.choices:
        letter = _PAREN_LETTER.findall(extraction)
        if letter:
            extraction = letter[0].upper()
        options = letters(len(sample.choices))
        if extraction in options:  # upper case only, as upstream
            return sample.choices[options.index(extraction)]
        return most_similar(extraction, sample.choices)
    number = py_float(extraction)
    try:
        if answer_type == "integer":
            return None if number is None else str(int(number))
        if answer_type == "float":
            return None if number is None else str(round(number, _precision(sample)))
    except (ValueError, OverflowError):  # int() of nan / inf: upstream's `except Exception` -> None
        return None
    return extraction


class MathVista(Benchmark):
    """MathVista testmini (1000 items): accuracy overall and per task, skill and answer type."""

    name: ClassVar[str] = "MathVista"
    aliases: ClassVar[tuple[str, ...]] = ("mathvista_mini", "mathvista-testmini")
    hf_repo: ClassVar[str] = "AI4Math/MathVista"
    hf_image_columns: ClassVar[tuple[str, ...]] = ("decoded_image", "image")
    default_split: ClassVar[str] = "testmini"
    tsv_name: ClassVar[str] = "MathVista_MINI"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("pid", "query", "answer", "question_type", "answer_type"),
        "tsv": ("index", "question", "answer", "question_type", "answer_type"),
    }
    uses_judge: ClassVar[bool] = True
    problem_type: ClassVar[str] = "numerical"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        metadata = record.get("metadata") if isinstance(record.get("metadata"), Mapping) else {}
        source: Mapping[str, Any] = metadata if layout == HF else record
        choices = list_field(record, "choices") or option_columns(record)
        meta = {
            "question_type": text(record, "question_type"),
            "answer_type": text(record, "answer_type"),
            "precision": record.get("precision"),
            "unit": text(record, "unit"),
            "task": text(source, "task"),
            "skills": list_field(source, "skills"),
        }
        return Sample(
            index=text(record, "pid" if layout == HF else "index"),
            question=text(record, "question"),
            answer=text(record, "answer"),
            choices=choices,
            images=images,
            meta=meta,
            prompt=text(record, "query" if layout == HF else "question"),
            origin=origin,
        )

    def sample_problem_type(self, sample: Sample) -> str:
        if sample.meta.get("question_type") == "multi_choice":
            return "multiple choice"
        return "numerical" if sample.meta.get("answer_type") in ("integer", "float") else "free-form"

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        groups: dict[str, tuple[str, ...]] = {}
        if sample.meta.get("task"):
            groups["task"] = (str(sample.meta["task"]),)
        if sample.meta.get("skills"):
            groups["skill"] = tuple(sample.meta["skills"])
        if sample.meta.get("answer_type"):
            groups["answer_type"] = (str(sample.meta["answer_type"]),)
        return groups

    def _gold(self, sample: Sample) -> str:
        if sample.meta.get("question_type") == "multi_choice" and sample.choices:
            options = letters(len(sample.choices))
            if sample.answer in options and sample.answer not in sample.choices:  # a hand-made file
                return sample.choices[options.index(sample.answer)]
        return sample.answer

    def prefetch(self, sample: Sample, answer: str) -> str | None:
        """VLMEvalKit's judge-free first try; the settled extraction, or None to ask the judge."""
        if sample.meta.get("question_type") == "multi_choice" and sample.choices:
            options = dict(zip(letters(len(sample.choices)), sample.choices, strict=True))
            return can_infer(answer, options, lenient=self.lenient)
        answer_type = sample.meta.get("answer_type")
        if answer_type == "integer":
            value, gold = py_int(answer), py_int(sample.answer)
            return answer if value is not None and value == gold else None
        if answer_type == "float":
            value, gold_float = py_float(answer), py_float(sample.answer)
            return answer if value is not None and value == gold_float else None
        return None

    def _matched(self, sample: Sample, extraction: str, method: str) -> ItemScore:
        if method == "prefetch":
            # VLMEvalKit scores a prefetched item itself: a number prefetches only when it equals
            # the answer; a letter must be the gold option (a refusal's `Z` never is)
            if not sample.choices:
                return self.item(sample, True, extraction, method)
            options = letters(len(sample.choices))
            if extraction not in options:
                return self.item(sample, False, extraction, method)
            chosen = sample.choices[options.index(extraction)]
            return self.item(sample, chosen == self._gold(sample), chosen, method)
        normalized = normalize(extraction, sample)
        hit = normalized is not None and normalized == self._gold(sample)
        return self.item(sample, hit, normalized or "", method)

    def score(self, sample: Sample, response: str) -> ItemScore:
        answer = answer_text(response)
        fetched = self.prefetch(sample, answer)
        if fetched is not None:
            return self._matched(sample, fetched, "prefetch")
        guess = short_answer(answer)
        if sample.meta.get("answer_type") in ("integer", "float") and py_float(guess) is None:
            number = parse_number(guess)
            number = last_number(guess) if number is None else number
            number = last_number(answer) if number is None else number
            guess = "" if number is None else repr(number)
        if not guess and not sample.choices:
            return self.item(sample, False, "", "rule")
        return self._matched(sample, guess, "rule")

    def judge_score(self, sample: Sample, response: str, ask: AskJudge) -> ItemScore:
        answer = answer_text(response)
        fetched = self.prefetch(sample, answer)
        if fetched is not None:
            return self._matched(sample, fetched, "prefetch")
        extracted = ask(extraction_prompt(self.prompt_text(sample), answer)).strip()
        return self._matched(sample, extracted, "judge")


BENCHMARK = MathVista()
