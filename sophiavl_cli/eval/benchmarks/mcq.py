"""VLMEvalKit's multiple-choice prompt and judge-free answer matching (MMMU, MMStar, MMBench), and
`CategorisedMCQ`, what MMStar and MMBench share: that prompt, that matching, per-category breakdowns.

`ImageMCQDataset.build_prompt`: an optional `Hint:` line, `Question: ...`, then `Options:` with one
`A. text` line per option and "Please select the correct answer from the options above." Without a
judge (`exact_matching`), the letter comes from `can_infer`; an unmatched answer counts as wrong
(VLMEvalKit records `Z`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from sophiavl_cli.eval.benchmarks.base import Benchmark, ImageSource, ItemScore, Sample, text
from sophiavl_cli.eval.matching import answer_text, can_infer, can_infer_option, letters


def mcq_prompt(question: str, options: Sequence[str], hint: str = "") -> str:
    """The MCQ prompt text, byte for byte as VLMEvalKit builds it (trailing space included)."""
    prompt = f"Hint: {hint}\n" if hint else ""
    prompt += f"Question: {question}\n"
    if options:
        prompt += "Options:\n" + "".join(
            f"{key}. {text}\n" for key, text in zip(letters(len(options)), options, strict=True)
        )
        prompt += "Please select the correct answer from the options above. \n"
    return prompt


def match_option(answer: str, options: Sequence[str], *, lenient: bool = False) -> str | None:
    """The option letter `answer` names (letter or option text; `Z` for a refusal), else None."""
    if not options:
        return can_infer_option(answer, {key: key for key in "ABCD"}, lenient=lenient)
    return can_infer(answer, dict(zip(letters(len(options)), options, strict=True)), lenient=lenient)


class CategorisedMCQ(Benchmark):
    """A VLMEvalKit MCQ benchmark with `category` / `l2-category` columns: accuracy overall and per
    category, the letter read by `match_option` (unmatched: wrong). Subclasses read their records."""

    group_keys: ClassVar[tuple[str, ...]] = ("category", "l2-category")  # the report's breakdown order

    def mcq_sample(
        self,
        record: Mapping[str, Any],
        origin: str,
        images: tuple[ImageSource, ...],
        question: str,
        choices: tuple[str, ...],
        **meta: Any,
    ) -> Sample:
        """The sample of one record whose question and options the subclass has read."""
        return Sample(
            index=text(record, "index"),
            question=question,
            answer=text(record, "answer").upper(),
            choices=choices,
            images=images,
            meta={
                **meta,
                "category": text(record, "category"),
                "l2-category": text(record, "l2-category") or text(record, "l2_category"),
            },
            prompt=mcq_prompt(question, choices, text(record, "hint")),
            origin=origin,
        )

    def sample_problem_type(self, sample: Sample) -> str:
        return "multiple choice"

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        return {key: (str(sample.meta[key]),) for key in self.group_keys if sample.meta.get(key)}

    def score(self, sample: Sample, response: str) -> ItemScore:
        letter = match_option(answer_text(response), sample.choices, lenient=self.lenient)
        if letter is None:
            return self.item(sample, False, "", "unmatched")
        return self.item(sample, letter == sample.answer, letter, "rule")
