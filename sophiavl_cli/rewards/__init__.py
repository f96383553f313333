"""Rewards: rule-based outcome scores per question type, format gate, user-defined checkers.

Importing this package stays cheap and pulls in no torch, Ray or OpenAI client: the scoring
libraries (sympy, math-verify, jiwer, rouge-score) load on first use, and the thinking-reward
client lives in its own module, imported where it is used.
"""

from sophiavl_cli.rewards.format import extract_answer, passes_format, score_format
from sophiavl_cli.rewards.outcome import (
    KNOWN_TYPES,
    OutcomeScore,
    OutcomeScorer,
    canonical_type,
    score_outcome,
    score_outcome_detailed,
)

__all__ = [
    "KNOWN_TYPES",
    "OutcomeScore",
    "OutcomeScorer",
    "canonical_type",
    "extract_answer",
    "passes_format",
    "score_format",
    "score_outcome",
    "score_outcome_detailed",
]
