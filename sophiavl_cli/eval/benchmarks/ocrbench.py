"""OCRBench: substring hits over 1000 items, summed per category ("Final Score" out of 1000).

VLMEvalKit's `OCRBench.evaluate`: for Handwritten Mathematical Expression Recognition both sides
are stripped, newlines become spaces and spaces are removed (tabs stay); for every other category
both are lowercased, stripped and newlines become spaces. An item hits when any gold answer is a
substring of the prediction, so an empty gold answer hits anything. `--lenient` removes every
whitespace character for HME and never lets an empty gold answer hit. The 6 text
recognition categories are also summed into "Text Recognition". Gold lists are read without
`eval` (VLMEvalKit calls `eval(line['answer'])`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import (
    Benchmark,
    BenchScore,
    ImageSource,
    ItemScore,
    Sample,
    list_field,
    text,
)
from sophiavl_cli.eval.matching import answer_text

HME = "Handwritten Mathematical Expression Recognition"
TEXT_RECOGNITION = (
    "Regular Text Recognition",
    "Irregular Text Recognition",
    "Artistic Text Recognition",
    "Handwriting Recognition",
    "Digit String Recognition",
    "Non-Semantic Text Recognition",
)
_WHITESPACE = re.compile(r"\s+")


def ocr_hit(golds: Sequence[str], prediction: str, category: str, *, lenient: bool = False) -> bool:
    """Whether any gold answer occurs in the prediction under the category's normalisation."""
    if lenient:
        golds = [gold for gold in golds if gold.strip()]
    if category == HME:
        if lenient:
            pred = _WHITESPACE.sub("", prediction)
            return any(_WHITESPACE.sub("", gold) in pred for gold in golds)
        pred = prediction.strip().replace("\n", " ").replace(" ", "")
        return any(gold.strip().replace("\n", " ").replace(" ", "") in pred for gold in golds)
    pred = prediction.lower().strip().replace("\n", " ")
    return any(gold.lower().strip().replace("\n", " ") in pred for gold in golds)


class OCRBench(Benchmark):
    """OCRBench: the headline is the hit count (points; 1000 items -> max 1000)."""

    name: ClassVar[str] = "OCRBench"
    aliases: ClassVar[tuple[str, ...]] = ("ocr-bench",)
    hf_repo: ClassVar[str] = "echo840/OCRBench"
    default_split: ClassVar[str] = "test"
    tsv_name: ClassVar[str] = "OCRBench"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("question", "answer", "question_type"),
        "tsv": ("index", "question", "answer", "category"),
    }
    metric: ClassVar[str] = "Final Score"
    unit: ClassVar[str] = "points"
    problem_type: ClassVar[str] = "OCR"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        answers = list_field(record, "answer")
        category = text(record, "category") or text(record, "question_type")
        index = text(record, "index") or text(record, "id") or origin.rsplit(" ", 1)[-1]
        return Sample(
            index=index,
            question=text(record, "question"),
            answer=answers[0] if answers else "",
            images=images,
            meta={"answers": answers, "category": category},
            origin=origin,
        )

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        category = str(sample.meta.get("category") or "")
        return {"category": (category,)} if category else {}

    def score(self, sample: Sample, response: str) -> ItemScore:
        prediction = answer_text(response)
        golds = [str(g) for g in sample.meta.get("answers", (sample.answer,))]
        hit = ocr_hit(golds, prediction, str(sample.meta.get("category") or ""), lenient=self.lenient)
        return self.item(sample, hit, prediction, "rule")

    def aggregate(self, samples: Sequence[Sample], items: Sequence[ItemScore]) -> BenchScore:
        by_category: dict[str, list[float]] = {}
        for item in items:
            for category in item.groups.get("category", ("",)):
                by_category.setdefault(category, []).append(item.score)
        hits = sum(item.score for item in items)
        breakdown = {"category": {k: (len(v), float(sum(v))) for k, v in sorted(by_category.items())}}
        text_recognition = sum(sum(by_category.get(c, [])) for c in TEXT_RECOGNITION)
        return BenchScore(
            benchmark=self.name,
            metric=self.metric,
            score=float(hits),
            unit=self.unit,
            num_items=len(items),
            breakdown=breakdown,
            extra={
                "Text Recognition": float(text_recognition),
                "Final Score Norm": 100.0 * hits / len(items) if items else 0.0,
            },
        )


BENCHMARK = OCRBench()
