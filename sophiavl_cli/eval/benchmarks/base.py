"""What every benchmark module provides: normalised samples, a default prompt, a scorer.

A benchmark module turns one record of either layout (Hugging Face original or VLMEvalKit TSV)
into a `Sample`, renders VLMEvalKit's default prompt for it (what the paper ran with
`use_custom_prompt=False`), scores one response with the official rules (`ItemScore`) and
aggregates the items into a `BenchScore` with breakdowns. Scoring is pure: no I/O, no model.

Benchmarks whose official scorer asks an LLM (MathVista, MathVerse, MathVision) also implement
`judge_score`, which the scoring layer calls only for items the rules could not settle.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from sophiavl_cli.errors import UserError

# An image as stored: encoded bytes (base64-decoded TSV cell, parquet struct) or a file path.
ImageSource = bytes | Path

# Sends a prompt to the judge model and returns its reply text.
AskJudge = Callable[[str], str]

HF = "hf"
TSV = "tsv"


@dataclass(frozen=True)
class Sample:
    """One benchmark item, the same whichever layout it came from."""

    index: str
    question: str
    answer: str
    choices: tuple[str, ...] = ()
    images: tuple[ImageSource, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)
    prompt: str | None = None  # ready-made prompt text from the data (MathVista `query`, ...)
    origin: str = ""  # "<file> row <n>", for error messages


@dataclass(frozen=True)
class ItemScore:
    """The score of one response; `groups` says which breakdown rows the item counts in."""

    index: str
    score: float
    extracted: str
    method: str  # prefetch | rule | judge | random | unmatched
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchScore:
    """A benchmark's result: the headline number, its breakdowns and any extra totals."""

    benchmark: str
    metric: str
    score: float
    unit: str  # "%" or "points"
    num_items: int
    breakdown: Mapping[str, Mapping[str, tuple[int, float]]]  # group -> key -> (n, score)
    extra: Mapping[str, float] = field(default_factory=dict)


class Benchmark(ABC):
    """Base class: subclasses set the class attributes and implement `from_record`, `score`."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()  # VLMEvalKit dataset names, lower-case spellings
    hf_repo: ClassVar[str]
    hf_configs: ClassVar[tuple[str, ...]] = ()  # all configs to read (MMMU: one per subject)
    hf_image_columns: ClassVar[tuple[str, ...]] = ("image",)
    hf_image_alternatives: ClassVar[bool] = True  # True: first column with images wins; False: all
    default_split: ClassVar[str]
    tsv_name: ClassVar[str]  # VLMEvalKit TSV file stem under $LMUData
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {}  # layout -> columns
    uses_judge: ClassVar[bool] = False
    metric: ClassVar[str] = "accuracy"
    unit: ClassVar[str] = "%"
    problem_type: ClassVar[str] = "free-form"  # sophiavl-r1 prompt suffix for non-MC items
    lenient: bool = False  # our documented departures from the official rule (docs/eval.md)

    def configured(self, *, lenient: bool) -> Benchmark:
        """A copy of this benchmark scoring with (`lenient=True`) or without our departures."""
        clone = copy.copy(self)
        clone.lenient = lenient
        return clone

    # ---- data ---------------------------------------------------------------------------------

    @abstractmethod
    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        """Normalise one record of `layout` (`hf` or `tsv`), its images already located, into a `Sample`."""

    def check_columns(self, columns: Sequence[str], layout: str, where: str) -> None:
        """One-line error naming the first missing required column."""
        missing = [c for c in self.required_columns.get(layout, ()) if c not in columns]
        if missing:
            raise UserError(
                f"{where}: column {missing[0]!r} is missing for {self.name} ({layout} layout needs "
                f"{', '.join(self.required_columns[layout])}); is this the right file?"
            )

    # ---- prompt -------------------------------------------------------------------------------

    def prompt_text(self, sample: Sample) -> str:
        """VLMEvalKit's default prompt text (images go before it, or at `<image N>` markers)."""
        return sample.prompt if sample.prompt is not None else sample.question

    def sample_problem_type(self, sample: Sample) -> str:
        """The sophiavl-r1 prompt suffix key for this item."""
        return "multiple choice" if sample.choices else self.problem_type

    # ---- scoring ------------------------------------------------------------------------------

    @abstractmethod
    def score(self, sample: Sample, response: str) -> ItemScore:
        """Rule-based score of one raw response."""

    def judge_score(self, sample: Sample, response: str, ask: AskJudge) -> ItemScore:
        """Score with an LLM judge; benchmarks without a judged scorer keep the rule score."""
        return self.score(sample, response)

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        """Breakdown rows of an item: group name -> keys (skills give several keys)."""
        return {}

    def aggregate(self, samples: Sequence[Sample], items: Sequence[ItemScore]) -> BenchScore:
        """Mean score x 100 overall and per breakdown key."""
        return BenchScore(
            benchmark=self.name,
            metric=self.metric,
            score=_mean_pct(item.score for item in items),
            unit=self.unit,
            num_items=len(items),
            breakdown=breakdown(items),
        )

    def item(self, sample: Sample, score: float, extracted: str, method: str) -> ItemScore:
        """An `ItemScore` carrying this sample's breakdown groups."""
        return ItemScore(sample.index, float(score), extracted, method, self.groups(sample))


def _mean_pct(values: Any) -> float:
    values = list(values)
    return 100.0 * sum(values) / len(values) if values else 0.0


def breakdown(items: Sequence[ItemScore]) -> dict[str, dict[str, tuple[int, float]]]:
    """group -> key -> (count, mean score x 100), keys sorted."""
    buckets: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for item in items:
        for group, keys in item.groups.items():
            for key in keys:
                buckets[group][key].append(item.score)
    return {
        group: {key: (len(vals), _mean_pct(vals)) for key, vals in sorted(keys.items())}
        for group, keys in buckets.items()
    }


def text(record: Mapping[str, Any], column: str, default: str = "") -> str:
    """A record field as a stripped string; missing/None/NaN become `default`."""
    value = record.get(column)
    if value is None or (isinstance(value, float) and value != value):
        return default
    return str(value).strip()


def option_columns(record: Mapping[str, Any]) -> tuple[str, ...]:
    """The option texts in VLMEvalKit's `A`, `B`, ... columns, stopping at the first empty one."""
    found: list[str] = []
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        value = text(record, letter)
        if not value:
            break
        found.append(value)
    return tuple(found)


def list_field(record: Mapping[str, Any], column: str) -> tuple[str, ...]:
    """A list-valued field: a real list (parquet) or a list literal string (TSV), read without eval."""
    from sophiavl_cli.eval.matching import parse_list_literal

    value = record.get(column)
    if value is None or (isinstance(value, float) and value != value):
        return ()
    if isinstance(value, list | tuple):
        return tuple(str(v).strip() for v in value)
    if hasattr(value, "tolist"):  # numpy array from pandas/pyarrow
        return tuple(str(v).strip() for v in value.tolist())
    parsed = parse_list_literal(str(value))
    if parsed is not None:
        return tuple(parsed)
    stripped = str(value).strip()
    return (stripped,) if stripped else ()
