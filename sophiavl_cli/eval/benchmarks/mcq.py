"""VLMEvalKit's multiple-choice prompt and judge-free answer matching (MMMU, MMStar).

`ImageMCQDataset.build_prompt`: an optional `Hint:` line, `Question: ...`, then `Options:` with one
`A. text` line per option and "Please select the correct answer from the options above." Without a
judge (`exact_matching`), the letter comes from `can_infer`; an unmatched answer counts as wrong
(VLMEvalKit records `Z`).
"""

from __future__ import annotations

from collections.abc import Sequence

from sophiavl_cli.eval.matching import can_infer, can_infer_option, letters


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
