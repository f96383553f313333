"""ChartQA test: relaxed accuracy (pix2struct's `relaxed_correctness`), per split (human, augmented).

A prediction is right when both it and a gold answer read as numbers (a trailing `%` divides by
100) within 5 % relative error of the gold, or, otherwise, when they are equal ignoring case. A
gold of 0 never parses as a number (upstream tests `if target_float:`), so it needs text equality.
The item score is the best over gold answers. The model must answer bare, so the `<answer>`
content is scored.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import (
    HF,
    Benchmark,
    ImageSource,
    ItemScore,
    Sample,
    list_field,
    text,
)
from sophiavl_cli.eval.matching import answer_text

SUFFIX = "\nAnswer the question using a single word or phrase."


def _to_float(value: str) -> float | None:
    try:
        return float(value.rstrip("%")) / 100.0 if value.endswith("%") else float(value)
    except ValueError:
        return None


def relaxed_correctness(target: str, prediction: str, max_relative_change: float = 0.05) -> bool:
    """pix2struct's ChartQA check of one prediction against one gold answer."""
    pred, gold = _to_float(prediction), _to_float(target)
    if pred is not None and gold:
        return abs(pred - gold) / abs(gold) <= max_relative_change
    return prediction.lower() == target.lower()


class ChartQA(Benchmark):
    """ChartQA test (2500 items: 1250 human + 1250 augmented)."""

    name: ClassVar[str] = "ChartQA"
    aliases: ClassVar[tuple[str, ...]] = ("chartqa_test",)
    hf_repo: ClassVar[str] = "lmms-lab/ChartQA"
    default_split: ClassVar[str] = "test"
    tsv_name: ClassVar[str] = "ChartQA_TEST"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("question", "answer"),
        "tsv": ("index", "question", "answer"),
    }
    problem_type: ClassVar[str] = "free-form"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        answers = list_field(record, "answer")
        split = text(record, "type") if layout == HF else text(record, "split")
        index = text(record, "index") or text(record, "id") or origin.rsplit(" ", 1)[-1]
        return Sample(
            index=index,
            question=text(record, "question"),
            answer=answers[0] if answers else "",
            images=images,
            meta={"answers": answers, "split": split.removesuffix("_test")},
            prompt=text(record, "question") + SUFFIX,
            origin=origin,
        )

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        return {"split": (str(sample.meta["split"]),)} if sample.meta.get("split") else {}

    def score(self, sample: Sample, response: str) -> ItemScore:
        prediction = answer_text(response).strip()
        golds = sample.meta.get("answers") or (sample.answer,)
        hit = any(relaxed_correctness(str(gold), prediction) for gold in golds)
        return self.item(sample, hit, prediction, "rule")


BENCHMARK = ChartQA()
