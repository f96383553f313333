"""The question types a row may have, and the spellings accepted for them.

The released code fell back to `numerical` for any unknown type, silently scoring e.g. typos with
the math grader; sophiavl rejects unknown types when data is loaded or registered instead.
Custom types (with a user reward function) are passed in as `extra_types`.
"""

from __future__ import annotations

from collections.abc import Iterable

PROBLEM_TYPES = ("numerical", "multiple choice", "OCR", "free-form", "text")

# Spellings seen in the released README and in the wild -> the canonical type.
_ALIASES = {
    "multiple_choice": "multiple choice",
    "multiple-choice": "multiple choice",
    "multiplechoice": "multiple choice",
    "free_form": "free-form",
    "free form": "free-form",
    "freeform": "free-form",
    "ocr": "OCR",
}


def normalize_problem_type(value: object) -> str:
    """The canonical spelling of a type (`multiple_choice` -> `multiple choice`); others unchanged."""
    text = "" if value is None else str(value).strip()
    if text in PROBLEM_TYPES:
        return text
    return _ALIASES.get(text.lower(), _ALIASES.get(text, text))


def valid_types(extra_types: Iterable[str] = ()) -> tuple[str, ...]:
    """The built-in types plus any custom ones."""
    return PROBLEM_TYPES + tuple(t for t in extra_types if t not in PROBLEM_TYPES)
