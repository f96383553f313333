"""MMMU validation: VLMEvalKit's MCQ prompt, MMMU's official answer parsing, per subject and discipline.

Scoring follows the MMMU repository (`eval/eval_utils.py`):
- multiple choice: `(A)` forms first, then a bare ` A `, then option text (responses over 5
  words); several candidates -> the one written last; none -> a random letter. Upstream draws it
  from one generator seeded 42 in data order; here it is seeded per item (42 and the index) so a
  score does not depend on order or sharding: the one unavoidable departure, counted under
  `match_methods.random`;
- open: key sub-responses after "is", "so", "therefore", "answer", "=" ... plus every number in
  them (an integer only where a word ends: "5cm" is no number), normalised (floats rounded to 2
  places, strings lowercased); correct when a normalised number equals a gold number or a gold
  string is inside a predicted string.

Departure from VLMEvalKit (which turns open questions into 2-option MCQs and needs a judge for
them): the official open parser is used, so no judge is needed. The response is first reduced
to its `<answer>` content, as the paper did.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import (
    HF,
    Benchmark,
    ImageSource,
    ItemScore,
    Sample,
    list_field,
    option_columns,
    text,
)
from sophiavl_cli.eval.benchmarks.mcq import mcq_prompt
from sophiavl_cli.eval.matching import answer_text, letters, parse_list_literal

DISCIPLINES: dict[str, tuple[str, ...]] = {
    "Art & Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health & Medicine": (
        "Basic_Medical_Science",
        "Clinical_Medicine",
        "Diagnostics_and_Laboratory_Medicine",
        "Pharmacy",
        "Public_Health",
    ),
    "Humanities & Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech & Engineering": (
        "Agriculture",
        "Architecture_and_Engineering",
        "Computer_Science",
        "Electronics",
        "Energy_and_Power",
        "Materials",
        "Mechanical_Engineering",
    ),
}
SUBJECTS: tuple[str, ...] = tuple(s for group in DISCIPLINES.values() for s in group)
_DISCIPLINE_OF = {subject: group for group, subjects in DISCIPLINES.items() for subject in subjects}

_ID_SUBJECT = re.compile(r"^(?:dev|validation|test)_(.+)_\d+$")
_COMMAS = r"-?\b\d{1,3}(?:,\d{3})+\b"
_SCIENTIFIC = r"-?\d+(?:\.\d+)?[eE][+-]?\d+"
# `\d+\b`: an integer counts only where a word ends, so "5cm" and "7x" are not numbers there
_SIMPLE = r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])"
_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")


# ---------------------------------------------------------------------- official parsing


def parse_multi_choice(response: str, options: Mapping[str, str], seed: str) -> tuple[str, str]:
    """(letter, method) for a multiple-choice response; method is `rule` or `random`."""
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    padded = f" {response} "
    candidates = [key for key in options if f"({key})" in padded]
    bracketed = bool(candidates)
    by_text = False
    if not candidates:
        candidates = [key for key in options if f" {key} " in padded]
    if not candidates and len(padded.split()) > 5:
        candidates = [key for key, value in options.items() if value.lower() in padded.lower()]
        by_text = bool(candidates)
    if not candidates:
        return random.Random(seed).choice(sorted(options)), "random"
    if len(candidates) == 1:
        return candidates[0], "rule"
    if by_text:
        positions = [padded.lower().rfind(options[key].lower()) for key in candidates]
    elif bracketed:
        positions = [padded.rfind(f"({key})") for key in candidates]
    else:
        positions = [padded.rfind(f" {key} ") for key in candidates]
    return candidates[positions.index(max(positions))], "rule"


def _is_number(value: str) -> bool:
    try:
        float(value.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_str(value: str) -> list[str | float]:
    """MMMU's `normalize_str`: numbers -> [round(float, 2)], strings -> lowercased (1 char padded)."""
    value = value.strip()
    if _is_number(value):
        return [round(float(value.replace(",", "")), 2)]
    value = value.lower()
    return [" " + value, value + " "] if len(value) == 1 else [value]


def extract_numbers(value: str) -> list[str]:
    """Numbers with thousands commas, in scientific notation and plain, in that order."""
    return re.findall(_COMMAS, value) + re.findall(_SCIENTIFIC, value) + re.findall(_SIMPLE, value)


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    # The upstream split looks for ". " before a capital letter after lowercasing, so in effect it
    # splits on newlines only; kept as is for parity.
    parts = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys: list[str] = []
    for position, part in enumerate(parts):
        indicators = [*_INDICATORS, "="] if position == len(parts) - 1 else list(_INDICATORS)
        shortest: str | None = None
        for indicator in indicators:
            if indicator in part:
                tail = part.split(indicator)[-1].strip()
                if shortest is None or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    return keys or [response]


def parse_open(response: str) -> list[str | float]:
    """MMMU's `parse_open_response`: normalised candidate answers of an open response."""
    keys = _key_subresponses(response)
    candidates: list[str] = list(keys)
    for key in keys:
        candidates.extend(extract_numbers(key))
    normalized: list[str | float] = []
    for candidate in candidates:
        for value in normalize_str(candidate):
            if value not in normalized:
                normalized.append(value)
    return normalized


def eval_open(gold: Sequence[str], predictions: Sequence[str | float]) -> bool:
    """MMMU's `eval_open`: a gold string inside a predicted string, or an equal number."""
    golds = [value for answer in gold for value in normalize_str(answer)]
    for pred in predictions:
        if isinstance(pred, str):
            if any(isinstance(g, str) and g in pred for g in golds):
                return True
        elif pred in golds:
            return True
    return False


# ---------------------------------------------------------------------- benchmark


def subject_of(sample_id: str) -> str:
    """`validation_Art_Theory_12` -> `Art_Theory`."""
    found = _ID_SUBJECT.match(sample_id)
    return found.group(1) if found else ""


class MMMU(Benchmark):
    """MMMU (validation, 900 items): accuracy overall, per subject and per discipline."""

    name: ClassVar[str] = "MMMU"
    aliases: ClassVar[tuple[str, ...]] = ("mmmu_dev_val", "mmmu_val", "mmmu-val")
    hf_repo: ClassVar[str] = "MMMU/MMMU"
    hf_configs: ClassVar[tuple[str, ...]] = SUBJECTS
    hf_image_columns: ClassVar[tuple[str, ...]] = tuple(f"image_{i}" for i in range(1, 8))
    hf_image_alternatives: ClassVar[bool] = False
    default_split: ClassVar[str] = "validation"
    tsv_name: ClassVar[str] = "MMMU_DEV_VAL"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("id", "question", "options", "answer"),
        "tsv": ("index", "question", "answer"),
    }
    problem_type: ClassVar[str] = "free-form"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        choices = list_field(record, "options") if layout == HF else option_columns(record)
        index = text(record, "id" if layout == HF else "index")
        subject = (
            subject_of(index)
            if layout == HF
            else (text(record, "category") or subject_of(text(record, "id")))
        )
        question_type = text(record, "question_type") or ("multiple-choice" if choices else "open")
        return Sample(
            index=index,
            question=text(record, "question"),
            answer=text(record, "answer"),
            choices=choices,
            images=images,
            meta={"subject": subject, "question_type": question_type, "split": text(record, "split")},
            prompt=mcq_prompt(text(record, "question"), choices, text(record, "hint")),
            origin=origin,
        )

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        subject = str(sample.meta.get("subject") or "")
        if not subject:
            return {}
        return {"subject": (subject,), "discipline": (_DISCIPLINE_OF.get(subject, "Other"),)}

    def score(self, sample: Sample, response: str) -> ItemScore:
        answer = answer_text(response)
        if sample.choices:
            options = dict(zip(letters(len(sample.choices)), sample.choices, strict=True))
            letter, method = parse_multi_choice(answer, options, seed=f"42-{sample.index}")
            return self.item(sample, letter == sample.answer.strip(), letter, method)
        gold = parse_list_literal(sample.answer) or [sample.answer]
        predictions = parse_open(answer)
        return self.item(sample, eval_open(gold, predictions), answer, "rule")


BENCHMARK = MMMU()
