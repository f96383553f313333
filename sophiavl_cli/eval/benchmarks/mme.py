"""MME: yes/no answers, acc + acc+ per category, perception and cognition sums (max 2000 / 800).

VLMEvalKit's `YOrN_Extraction` + `MME_rating`: after VLMEvalKit's `process_punctuation`, a
response is Yes when the word yes occurs and no does not, No the other way round, else Unknown
(wrong without a judge). `*`, `:` and quotes are kept there, so `**Yes**` is Unknown; `--lenient`
drops them first. Per category, score = acc x 100 +
acc+ x 100, where acc+ counts an image only when both of its questions are right. The paper's
"MME" is perception + cognition (max 2800). Questions of one image are paired by `image_path`
(TSV), `question_id` (Hugging Face) or, failing both, the image reference of the TSV row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import (
    Benchmark,
    BenchScore,
    ImageSource,
    ItemScore,
    Sample,
    text,
)
from sophiavl_cli.eval.matching import answer_text, yes_no

PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


class MME(Benchmark):
    """MME (2374 items): the headline is perception + cognition (points)."""

    name: ClassVar[str] = "MME"
    hf_repo: ClassVar[str] = "lmms-lab/MME"
    default_split: ClassVar[str] = "test"
    tsv_name: ClassVar[str] = "MME"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("question_id", "question", "answer", "category"),
        "tsv": ("index", "question", "answer", "category"),
    }
    metric: ClassVar[str] = "perception + cognition"
    unit: ClassVar[str] = "points"
    problem_type: ClassVar[str] = "free-form"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        index = text(record, "index") or text(record, "question_id")
        if index == text(record, "question_id"):  # two questions share a question_id; make it unique
            index = f"{index}#{origin.rsplit(' ', 1)[-1]}"
        pair = text(record, "image_path") or text(record, "question_id") or text(record, "image_ref") or index
        return Sample(
            index=index,
            question=text(record, "question"),
            answer=text(record, "answer").capitalize(),
            images=images,
            meta={"category": text(record, "category"), "pair": pair},
            origin=origin,
        )

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        return {"category": (str(sample.meta.get("category") or ""),)}

    def score(self, sample: Sample, response: str) -> ItemScore:
        said = yes_no(answer_text(response), lenient=self.lenient)
        method = "unmatched" if said == "Unknown" else "rule"
        return self.item(sample, said == sample.answer, said, method)

    def aggregate(self, samples: Sequence[Sample], items: Sequence[ItemScore]) -> BenchScore:
        by_index = {s.index: s for s in samples}
        per_category: dict[str, list[float]] = defaultdict(list)
        per_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
        for item in items:
            sample = by_index[item.index]
            category = str(sample.meta.get("category") or "")
            per_category[category].append(item.score)
            per_pair[(category, str(sample.meta.get("pair")))].append(item.score)
        scores: dict[str, tuple[int, float]] = {}
        for category, values in sorted(per_category.items()):
            pairs = [v for (c, _), v in per_pair.items() if c == category]
            acc = 100.0 * sum(values) / len(values)
            acc_plus = 100.0 * sum(all(p) for p in pairs) / len(pairs)
            scores[category] = (len(values), acc + acc_plus)
        perception = sum(scores[c][1] for c in PERCEPTION if c in scores)
        cognition = sum(scores[c][1] for c in COGNITION if c in scores)
        return BenchScore(
            benchmark=self.name,
            metric=self.metric,
            score=perception + cognition,
            unit=self.unit,
            num_items=len(items),
            breakdown={"category": scores},
            extra={"perception": perception, "cognition": cognition},
        )


BENCHMARK = MME()
