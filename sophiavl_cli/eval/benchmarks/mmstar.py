"""MMStar (val, 1500 items): VLMEvalKit's MCQ prompt and judge-free option matching, per category.

The Hugging Face copy writes the options into the question ("Options: A: x, B: y, ..."); they are
split back out so both layouts get the same `Question:/Options:` prompt. Unmatched -> wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import HF, ImageSource, Sample, option_columns, text
from sophiavl_cli.eval.benchmarks.mcq import CategorisedMCQ

_INLINE_OPTIONS = re.compile(r"^(.*?)\s*Options:\s*(A[:.].*)$", re.DOTALL)
_OPTION_SPLIT = re.compile(r"(?:^|,\s*|\n)([A-F])[:.]\s*")


def split_inline_options(question: str) -> tuple[str, tuple[str, ...]]:
    """`"Which? Options: A: x, B: y"` -> ("Which?", ("x", "y")); unchanged when there are none."""
    found = _INLINE_OPTIONS.match(question)
    if not found:
        return question, ()
    pieces = _OPTION_SPLIT.split(found.group(2))
    # pieces: ['', 'A', 'x', 'B', 'y', ...]
    keys, values = pieces[1::2], [p.strip().rstrip(",").strip() for p in pieces[2::2]]
    if keys != [chr(ord("A") + i) for i in range(len(keys))]:
        return question, ()
    return found.group(1).strip(), tuple(values)


class MMStar(CategorisedMCQ):
    """MMStar: accuracy overall, per category and per l2-category."""

    name: ClassVar[str] = "MMStar"
    aliases: ClassVar[tuple[str, ...]] = ("mm-star",)
    hf_repo: ClassVar[str] = "Lin-Chen/MMStar"
    default_split: ClassVar[str] = "val"
    tsv_name: ClassVar[str] = "MMStar"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("index", "question", "answer"),
        "tsv": ("index", "question", "answer", "A", "B"),
    }

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        question = text(record, "question")
        choices = option_columns(record)
        if layout == HF and not choices:
            question, choices = split_inline_options(question)
        return self.mcq_sample(record, origin, images, question, choices)


BENCHMARK = MMStar()
