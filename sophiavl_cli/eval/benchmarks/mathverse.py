"""MathVerse testmini: accuracy per problem version (Text Dominant ... Vision Only), subject, subfield.

The official scorer is two LLM calls (extract the answer, then judge it against the standard
answer); VLMEvalKit skips the second when the extracted answer equals the gold one ("prefetch").
`--lenient` also skips the first when the answer text already equals the gold answer. Without a
judge there is no official rule: a multiple-choice answer is the option letter found in the answer
text, a free-form one is compared by `math_equal` (`is_equal`, then the shared reward checker), and
the number is labelled rule-based.

Prompt: image + the `question` field, as VLMEvalKit's `MathVerse.build_prompt` without `cot`.
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
    text,
)
from sophiavl_cli.eval.matching import answer_text, can_infer_option, math_equal, short_answer

_LETTER = re.compile(r"^[A-H]$")
_JUDGEMENT = re.compile(r"judg(?:e)?ment\s*:?\s*([01])", re.IGNORECASE)

EXTRACT_PROMPT = (
    "Extract the final answer from the model response below. For a multiple-choice question reply "
    "with the option letter only; otherwise reply with the value or expression only.\n\n"
    "Example: Model response: 'Angle ABC is 180 - 60 - 50 = 70 degrees, so the answer is C.'\n"
    "Extracted Answer: C\n\n"
    "Example: Model response: 'The area equals 3 times 4, which is 12 square units.'\n"
    "Extracted Answer: 12\n\n"
    "Example: Model response: 'Solving gives y = 2x + 1.'\nExtracted Answer: y = 2x + 1\n\n"
)
SCORE_PROMPT = (
    "Decide whether the model answer matches the standard answer of the question. Equivalent forms "
    "(2/4 and 0.5, an option letter and its option text) count as a match. Reply with "
    "'Judgement: 1' for a match and 'Judgement: 0' otherwise, nothing else.\n\n"
)


class MathVerse(Benchmark):
    """MathVerse testmini (5 versions x 788 problems); the headline is the mean over all items."""

    name: ClassVar[str] = "MathVerse"
    aliases: ClassVar[tuple[str, ...]] = ("mathverse_mini", "mathverse-testmini")
    hf_repo: ClassVar[str] = "AI4Math/MathVerse"
    hf_configs: ClassVar[tuple[str, ...]] = ("testmini",)
    default_split: ClassVar[str] = "testmini"
    tsv_name: ClassVar[str] = "MathVerse_MINI"
    required_columns: ClassVar[dict[str, tuple[str, ...]]] = {
        "hf": ("sample_index", "question", "answer", "problem_version"),
        "tsv": ("index", "question", "answer"),
    }
    uses_judge: ClassVar[bool] = True
    problem_type: ClassVar[str] = "free-form"

    def from_record(
        self, record: Mapping[str, Any], layout: str, origin: str, images: tuple[ImageSource, ...]
    ) -> Sample:
        metadata = record.get("metadata") if isinstance(record.get("metadata"), Mapping) else {}
        source: Mapping[str, Any] = metadata if layout == HF and metadata else record
        answer = text(record, "answer")
        question_type = text(record, "question_type") or (
            "multi-choice" if _LETTER.match(answer) else "free-form"
        )
        return Sample(
            index=text(record, "sample_index" if layout == HF else "index"),
            question=text(record, "question_for_eval") or text(record, "question"),
            answer=answer,
            images=images,
            meta={
                "question_type": question_type,
                "problem_version": text(record, "problem_version"),
                "subject": text(source, "subject"),
                "subfield": text(source, "subfield"),
            },
            prompt=text(record, "question"),
            origin=origin,
        )

    def sample_problem_type(self, sample: Sample) -> str:
        return "multiple choice" if self._is_choice(sample) else "free-form"

    def groups(self, sample: Sample) -> dict[str, tuple[str, ...]]:
        return {
            key: (str(sample.meta[key]),)
            for key in ("problem_version", "subject", "subfield")
            if sample.meta.get(key)
        }

    @staticmethod
    def _is_choice(sample: Sample) -> bool:
        return sample.meta.get("question_type") == "multi-choice" and bool(_LETTER.match(sample.answer))

    def _rule(self, sample: Sample, answer: str) -> tuple[bool, str, str]:
        if answer.strip() == sample.answer.strip():
            return True, answer.strip(), "prefetch"
        if self._is_choice(sample):
            letter = can_infer_option(answer, {c: c for c in "ABCDEFGH"}, lenient=self.lenient) or ""
            return letter == sample.answer, letter, "rule"
        guess = short_answer(answer)
        return math_equal(guess, sample.answer), guess, "rule"

    def score(self, sample: Sample, response: str) -> ItemScore:
        hit, extracted, method = self._rule(sample, answer_text(response))
        return self.item(sample, hit, extracted, method)

    def judge_score(self, sample: Sample, response: str, ask: AskJudge) -> ItemScore:
        answer = answer_text(response)
        if self.lenient and answer.strip() == sample.answer.strip():
            return self.item(sample, True, answer.strip(), "prefetch")
        extracted = ask(f"{EXTRACT_PROMPT}Model response: '{answer}'\nExtracted Answer:").strip()
        if extracted == sample.answer.strip():  # VLMEvalKit's prefetch of the scoring call
            return self.item(sample, True, extracted, "prefetch")
        verdict = ask(
            f"{SCORE_PROMPT}[Question]: {sample.question}\n[Standard Answer]: {sample.answer}\n"
            f"[Model Answer]: {extracted}\nJudgement:"
        )
        found = _JUDGEMENT.findall("Judgement: " + verdict.strip())
        return self.item(sample, bool(found) and found[-1] == "1", extracted, "judge")


BENCHMARK = MathVerse()
