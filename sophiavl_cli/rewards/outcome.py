"""Rule-based outcome rewards: the format gate, then a per-question-type answer score in [0, 1].

Pure and cheap: no torch, Ray or network; scoring libraries load on first use. The same checkers
serve the RL reward and evaluation, so the two cannot drift. Types and decisions: docs/rewards.md.

Usage:
    score_outcome(response, "<answer>B</answer>", "multiple choice")          # built-in types
    scorer = OutcomeScorer({"bbox": "rewards/iou.py:score"})                   # plus recipe types
    scorer.score_detailed(response, truth, "bbox")  # {"overall", "format", "accuracy"}
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict

from sophiavl_cli.rewards.answer import (
    NUMERIC_TIMEOUT_S,
    choice_score,
    numerical_score,
    ocr_score,
    rouge_score,
)
from sophiavl_cli.rewards.custom import AnswerScorer, load_reward_function
from sophiavl_cli.rewards.format import (
    extract_answer,
    ground_truth_answer,
    passes_format,
    strip_math_delimiters,
)

KNOWN_TYPES: tuple[str, ...] = ("numerical", "multiple choice", "OCR", "free-form", "text")
"""Built-in problem types, spelled as in the SophiaVL-R1 data."""


def type_key(problem_type: str) -> str:
    """Spelling-insensitive key: `multiple_choice`, `Multiple-Choice`, `multiple choice` are equal."""
    return " ".join(problem_type.casefold().replace("_", " ").replace("-", " ").split())


_BUILTIN_KEYS = {type_key(name): name for name in KNOWN_TYPES}


def canonical_type(problem_type: str) -> str:
    """The built-in type's canonical name (`free_form` -> `free-form`); ValueError when unknown."""
    name = _BUILTIN_KEYS.get(type_key(problem_type))
    if name is None:
        raise ValueError(
            f"unknown problem_type {problem_type!r}; known types: {', '.join(KNOWN_TYPES)} "
            "(add more with reward.custom in the recipe)"
        )
    return name


class OutcomeScore(TypedDict):
    """Reward breakdown of one response; each key is logged as `reward/<key>` (overall as outcome)."""

    overall: float  # the outcome reward used for training
    format: float  # 1.0 when the format gate passes
    accuracy: float  # the answer score, 0 when the gate fails


def _builtin_scorer(name: str, numeric_timeout: float | None) -> AnswerScorer:
    if name == "numerical":
        return lambda answer, truth: numerical_score(answer, truth, timeout=numeric_timeout)
    if name == "multiple choice":
        return choice_score
    if name == "OCR":
        return ocr_score
    return rouge_score  # free-form and text


def _breakdown(scorer: AnswerScorer, response: str, ground_truth: str, format_weight: float) -> OutcomeScore:
    if not passes_format(response):
        return OutcomeScore(overall=0.0, format=0.0, accuracy=0.0)
    # first: the released SophiaVL-R1 reward scored the first block, and training keeps its reward
    answer = strip_math_delimiters(extract_answer(response, which="first") or "")
    accuracy = scorer(answer, ground_truth_answer(ground_truth)) if answer else 0.0
    overall = (1.0 - format_weight) * accuracy + format_weight
    return OutcomeScore(overall=overall, format=1.0, accuracy=accuracy)


def score_outcome_detailed(
    response: str, ground_truth: str, problem_type: str, *, format_weight: float = 0.0
) -> OutcomeScore:
    """The outcome reward of one response with its format and accuracy parts.

    `overall = (1 - format_weight) * accuracy + format_weight * format`; with the default weight 0
    the format is a pure gate, as released. `ground_truth` may be wrapped in `<answer>` tags.
    """
    name = canonical_type(problem_type)
    return _breakdown(_builtin_scorer(name, NUMERIC_TIMEOUT_S), response, ground_truth, format_weight)


def score_outcome(response: str, ground_truth: str, problem_type: str) -> float:
    """Outcome reward in [0, 1]: 0 unless the format gate passes, then the per-type answer score.

    Example:
        >>> score_outcome("<think>5 - 3</think><answer>$2$</answer>", "<answer>2</answer>", "numerical")
        1.0
    """
    return score_outcome_detailed(response, ground_truth, problem_type)["overall"]


class OutcomeScorer:
    """Built-in types plus the recipe's `reward.custom` types (`problem_type -> file.py:function`).

    A custom entry whose name matches a built-in type replaces it. Custom files are loaded once, at
    construction, so a wrong path fails before training starts. Pickles by its recipe entries (the
    loaded modules are reloaded on the other side), so it can be sent to Ray workers.
    """

    def __init__(
        self,
        custom: Mapping[str, str] | None = None,
        *,
        base_dir: str | Path | None = None,
        format_weight: float = 0.0,
        numeric_timeout: float | None = NUMERIC_TIMEOUT_S,
    ) -> None:
        if not 0.0 <= format_weight <= 1.0:
            raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
        self._custom_specs = dict(custom or {})
        self._base_dir = base_dir
        self._format_weight = format_weight
        self._numeric_timeout = numeric_timeout
        self._names: dict[str, str] = dict(_BUILTIN_KEYS)
        self._scorers: dict[str, AnswerScorer] = {
            key: _builtin_scorer(name, numeric_timeout) for key, name in _BUILTIN_KEYS.items()
        }
        for problem_type, spec in self._custom_specs.items():
            key = type_key(problem_type)
            self._names[key] = _BUILTIN_KEYS.get(key, problem_type)
            self._scorers[key] = load_reward_function(spec, problem_type=problem_type, base_dir=base_dir)

    @property
    def known_types(self) -> tuple[str, ...]:
        """Every type this scorer accepts: the built-in ones, then the custom ones."""
        return tuple(dict.fromkeys(self._names.values()))

    def canonical(self, problem_type: str) -> str:
        """The accepted spelling of `problem_type`; ValueError naming the known types when unknown."""
        name = self._names.get(type_key(problem_type))
        if name is None:
            raise ValueError(
                f"unknown problem_type {problem_type!r}; known types: {', '.join(self.known_types)} "
                "(add more with reward.custom in the recipe)"
            )
        return name

    def _scorer(self, problem_type: str) -> Callable[[str, str], float]:
        self.canonical(problem_type)
        return self._scorers[type_key(problem_type)]

    def score_detailed(self, response: str, ground_truth: str, problem_type: str) -> OutcomeScore:
        """Like `score_outcome_detailed`, with this scorer's types and format weight."""
        return _breakdown(self._scorer(problem_type), response, ground_truth, self._format_weight)

    def score(self, response: str, ground_truth: str, problem_type: str) -> float:
        """Like `score_outcome`, with this scorer's types and format weight."""
        return self.score_detailed(response, ground_truth, problem_type)["overall"]

    def __getstate__(self) -> dict[str, Any]:
        return {
            "custom": self._custom_specs,
            "base_dir": self._base_dir,
            "format_weight": self._format_weight,
            "numeric_timeout": self._numeric_timeout,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        custom = state.pop("custom")
        self.__init__(custom, **state)  # type: ignore[misc]
