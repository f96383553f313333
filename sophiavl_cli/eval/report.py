"""Eval outputs: per-benchmark scores JSON + CSV (with breakdowns) and the rich summary table.

Beside each headline the table shows the paper's number (SophiaVL-R1 v1, method.md §7) for
SophiaVL-R1-7B and Qwen2.5-VL-7B-Instruct where the paper reports that benchmark. The paper ran
VLMEvalKit with GPT judges, so a `rule-based` score is a lower bound on the comparable number.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from sophiavl_cli.eval.benchmarks.base import BenchScore, ItemScore
from sophiavl_cli.fileio import atomic_write_json, atomic_write_text

SOPHIAVL = "SophiaVL-R1-7B"
QWEN = "Qwen2.5-VL-7B-Instruct"

# The paper's Table (v1): benchmark -> model -> headline score.
PAPER_SCORES: dict[str, dict[str, float]] = {
    "MathVista": {SOPHIAVL: 71.3, QWEN: 67.5},
    "MathVerse": {SOPHIAVL: 48.8, QWEN: 44.0},
    "MMMU": {SOPHIAVL: 61.3, QWEN: 57.4},
    "MME": {SOPHIAVL: 2403.8, QWEN: 2306.0},
    "ChartQA": {SOPHIAVL: 88.5, QWEN: 86.3},
    "MMBench": {SOPHIAVL: 85.4, QWEN: 83.3},
    "MMStar": {SOPHIAVL: 66.7, QWEN: 64.3},
}


@dataclass(frozen=True)
class EvalResult:
    """One benchmark's scores plus how they were obtained."""

    score: BenchScore
    scoring: str  # "official rules" | "rule-based" | "judge:<model>"
    model: str
    prompt: str
    split: str
    num_samples: int  # samples in the data (after --limit)
    methods: dict[str, int] = field(
        default_factory=dict
    )  # how items were matched: prefetch, rule, judge, ...
    answered: int | None = None  # samples with a prediction (None: all of them)
    duplicates: int = 0  # indexes given more than once in a predictions file
    lenient: bool = False  # scored with our documented departures (`--lenient`)

    @property
    def coverage(self) -> float:
        """Share of the data's samples that have a prediction, in %."""
        answered = self.num_samples if self.answered is None else self.answered
        return 100.0 * answered / self.num_samples if self.num_samples else 0.0

    @property
    def partial(self) -> bool:
        """Whether some samples of the data have no prediction."""
        return self.answered is not None and self.answered < self.num_samples

    def to_json(self) -> dict[str, Any]:
        """The scores JSON object."""
        s = self.score
        return {
            "benchmark": s.benchmark,
            "split": self.split,
            "model": self.model,
            "prompt": self.prompt,
            "scoring": self.scoring,
            "metric": s.metric,
            "score": round(s.score, 4),
            "unit": s.unit,
            "num_samples": self.num_samples,
            "num_scored": s.num_items,
            "coverage": {
                "answered": self.num_samples if self.answered is None else self.answered,
                "of": self.num_samples,
                "percent": round(self.coverage, 2),
                "duplicates": self.duplicates,
            },
            "lenient": self.lenient,
            "match_methods": self.methods,
            "extra": {k: round(v, 4) for k, v in s.extra.items()},
            "breakdown": {
                group: {key: {"n": n, "score": round(value, 4)} for key, (n, value) in keys.items()}
                for group, keys in s.breakdown.items()
            },
            "paper": PAPER_SCORES.get(s.benchmark, {}),
        }


def make_result(
    score: BenchScore,
    items: Sequence[ItemScore],
    *,
    scoring: str,
    model: str,
    prompt: str,
    split: str,
    num_samples: int,
    answered: int | None = None,
    duplicates: int = 0,
    lenient: bool = False,
) -> EvalResult:
    """An `EvalResult` with the match-method counts of `items`."""
    methods = dict(sorted(Counter(item.method for item in items).items()))
    return EvalResult(
        score, scoring, model, prompt, split, num_samples, methods, answered, duplicates, lenient
    )


def csv_text(result: EvalResult) -> str:
    """CSV rows: the headline, the extra totals, then every breakdown row."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    s = result.score
    writer.writerow(["benchmark", "group", "key", "n", "score", "unit", "scoring"])
    writer.writerow([s.benchmark, "overall", s.metric, s.num_items, f"{s.score:.4f}", s.unit, result.scoring])
    for key, value in s.extra.items():
        writer.writerow([s.benchmark, "total", key, s.num_items, f"{value:.4f}", s.unit, result.scoring])
    for group, keys in s.breakdown.items():
        for key, (n, value) in keys.items():
            writer.writerow([s.benchmark, group, key, n, f"{value:.4f}", s.unit, result.scoring])
    return buffer.getvalue()


def write_result(result: EvalResult, folder: Path) -> tuple[Path, Path]:
    """Write `scores.json` and `scores.csv` into `folder` (atomically); returns both paths."""
    json_path, csv_path = folder / "scores.json", folder / "scores.csv"
    atomic_write_json(json_path, result.to_json())
    atomic_write_text(csv_path, csv_text(result))
    return json_path, csv_path


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "—"
    return f"{value:.1f}" if unit == "points" else f"{value:.2f}" if unit == "%" else f"{value:g}"


def summary_table(results: Sequence[EvalResult]) -> Table:
    """One row per benchmark: score, how it was scored, and the paper's numbers beside it."""
    table = Table(title="sophiavl eval", show_lines=False)
    for column, justify in (
        ("benchmark", "left"),
        ("metric", "left"),
        ("n", "right"),
        ("score", "right"),
        ("scoring", "left"),
        (f"paper {SOPHIAVL}", "right"),
        (f"paper {QWEN}", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for result in results:
        s = result.score
        paper = PAPER_SCORES.get(s.benchmark, {})
        n = str(s.num_items)
        if result.partial:  # the score covers only part of the data: say so beside it
            n = f"{result.answered}/{result.num_samples} ({result.coverage:.0f}% coverage)"
        scoring = f"{result.scoring}, lenient" if result.lenient else result.scoring
        table.add_row(
            s.benchmark,
            f"{s.metric} ({s.unit})",
            n,
            _fmt(s.score, s.unit),
            scoring,
            _fmt(paper.get(SOPHIAVL), s.unit) if paper else "—",
            _fmt(paper.get(QWEN), s.unit) if paper else "—",
        )
    return table
