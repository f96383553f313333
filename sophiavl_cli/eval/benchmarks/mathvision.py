"""MathVision (test 3040 / testmini 304): accuracy overall and per subject and level.

VLMEvalKit's `utils/mathv.py`: prefetch first (with options, any option letter `can_infer` finds
settles the item; without, the answer text settles it when `is_equal` to the gold answer), else
GPT extracts the answer (same style as MathVista); then `post_check`: the option letter must
equal the gold letter, or `is_equal` (lowercased text, then arithmetic, then latex2sympy values)
must hold. Without `--judge` the extraction is our rule guess (boxed content or last line), so the
number is labelled rule-based. `--lenient` adds the shared reward checker (mathruler, math-verify).

Prompt: image + question; for the Hugging Face layout the options are appended as
`(A) ...` lines when the question does not list them already.
"""

from __future__ import annotations

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
from sophiavl_cli.eval.benchmarks.mathvista import extraction_prompt
from sophiavl_cli.eval.matching import answer_text, can_infer, is_equal, letters, math_equal, short_answer


class MathVision(Benchmark):
    """MathVision; `--split testmini` for the 304-item subset."""

    name: ClassVar[str] = "MathVision"
    aliases: ClassVar[tuple[str, ...]] = ("mathvision_mini", "math-vision", "mathv")
    hf_repo: ClassVar[str] = "MathLLMs/MathVision"
    hf_image_columns: ClassVar[tuple[str, ...]] = ("decoded_image", "image")
    default_split: ClassVar[str] = "test"
    tsv_name: ClassVar[str] = "MathVision"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("id", "question", "answer"),
        "tsv": ("index", "question", "answer"),
    }
    uses_judge: ClassVar[bool] = True
    problem_type: ClassVar[str] = "free-form"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        choices = list_field(record, "options") or list_field(record, "choices") or option_columns(record)
        question = text(record, "question")
        prompt = question
        if layout == HF and choices and "(A)" not in question:
            prompt = (
                question
                + "\n"
                + "\n".join(f"({k}) {v}" for k, v in zip(letters(len(choices)), choices, strict=True))
            )
        return Sample(
            index=text(record, "id" if layout == HF else "index"),
            question=question,
            answer=text(record, "answer"),
            choices=choices,
            images=images,
            meta={
                "subject": text(record, "subject") or text(record, "category"),
                "level": text(record, "level"),
            },
            prompt=prompt,
            origin=origin,
        )

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        return {key: (str(sample.meta[key]),) for key in ("subject", "level") if sample.meta.get(key)}

    def _check(self, sample: Sample, extracted: str, method: str) -> ItemScore:
        if sample.choices:
            options = dict(zip(letters(len(sample.choices)), sample.choices, strict=True))
            letter = can_infer(extracted, options, lenient=self.lenient) or ""
            return self.item(sample, is_equal(letter or "false", sample.answer), letter, method)
        equal = math_equal if self.lenient else is_equal
        return self.item(sample, equal(extracted, sample.answer), extracted, method)

    def _prefetch(self, sample: Sample, answer: str) -> ItemScore | None:
        first = self._check(sample, answer, "prefetch")
        return first if first.score or (sample.choices and first.extracted) else None

    def score(self, sample: Sample, response: str) -> ItemScore:
        answer = answer_text(response)
        return self._prefetch(sample, answer) or self._check(sample, short_answer(answer), "rule")

    def judge_score(self, sample: Sample, response: str, ask: AskJudge) -> ItemScore:
        answer = answer_text(response)
        fetched = self._prefetch(sample, answer)
        if fetched is not None:
            return fetched
        extracted = ask(extraction_prompt(self.prompt_text(sample), answer)).strip()
        return self._check(sample, extracted, "judge")


BENCHMARK = MathVision()
