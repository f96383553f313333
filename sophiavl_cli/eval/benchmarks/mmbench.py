"""MMBench dev (English): VLMEvalKit's MCQ prompt and CircularEval, per category and l2-category.

The data (VLMEvalKit's `MMBench_DEV_EN.tsv`, or the Hugging Face `lmms-lab/MMBench` `en` config)
holds every question once per rotation of its options: the question as asked has index `i`, its
rotations `i + k * 1e6`. As `mcq_circular_eval` does, rows are grouped by `index % 1e6` and a
question counts as right only when every row of its group is (letter by `can_infer`; unmatched or
a refusal's `Z` is wrong). Only groups whose unrotated row is present are scored, and the
breakdowns use that row's `category` / `l2-category`. The headline is the circular accuracy; the
plain accuracy of the unrotated rows is reported beside it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks.base import (
    BenchScore,
    ImageSource,
    ItemScore,
    Sample,
    breakdown,
    option_columns,
    text,
)
from sophiavl_cli.eval.benchmarks.mcq import CategorisedMCQ

ROTATION = 1_000_000  # VLMEvalKit: g_index = int(index % 1e6)


def group_of(index: str, origin: str = "") -> int:
    """The question a row belongs to: its integer index modulo 1e6."""
    try:
        return int(float(index)) % ROTATION
    except ValueError:
        raise UserError(
            f"{origin or 'MMBench'}: index {index!r} is not an integer; MMBench rows need integer indexes "
            "(rotations are index + k*1000000)"
        ) from None


class MMBench(CategorisedMCQ):
    """MMBench_DEV_EN (1164 questions in 4329 rows): CircularEval accuracy."""

    name: ClassVar[str] = "MMBench"
    aliases: ClassVar[tuple[str, ...]] = ("mmbench_dev_en", "mmbench-dev-en", "mmbench_en")
    hf_repo: ClassVar[str] = "lmms-lab/MMBench"
    hf_configs: ClassVar[tuple[str, ...]] = ("en",)
    default_split: ClassVar[str] = "dev"
    tsv_name: ClassVar[str] = "MMBench_DEV_EN"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("index", "question", "answer", "A", "B"),
        "tsv": ("index", "question", "answer", "A", "B"),
    }
    metric: ClassVar[str] = "circular accuracy"

    group_keys: ClassVar[tuple[str, ...]] = ("l2-category", "category")

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        index = text(record, "index")
        question, choices = text(record, "question"), option_columns(record)
        return self.mcq_sample(record, origin, images, question, choices, group=group_of(index, origin))

    def circular(self, samples: Sequence[Sample], items: Sequence[ItemScore]) -> dict[int, ItemScore]:
        """Question (index % 1e6) -> its unrotated row's score, 1 only when every rotation is right."""
        by_index = {s.index: s for s in samples}
        rows: dict[int, list[ItemScore]] = defaultdict(list)
        main: dict[int, ItemScore] = {}
        for item in items:
            group = int(by_index[item.index].meta["group"])
            rows[group].append(item)
            if int(float(item.index)) == group:
                main[group] = item
        return {
            group: replace(item, score=float(all(r.score for r in rows[group])))
            for group, item in main.items()
        }

    def aggregate(self, samples: Sequence[Sample], items: Sequence[ItemScore]) -> BenchScore:
        by_group = self.circular(samples, items)
        circular = list(by_group.values())
        unrotated = [item for item in items if int(float(item.index)) in by_group]
        return BenchScore(
            benchmark=self.name,
            metric=self.metric,
            score=_pct(circular),
            unit=self.unit,
            num_items=len(circular),
            breakdown=breakdown(circular),
            extra={"accuracy (unrotated rows)": _pct(unrotated)},
        )


def _pct(items: Sequence[ItemScore]) -> float:
    return 100.0 * sum(item.score for item in items) / len(items) if items else 0.0


BENCHMARK = MMBench()
