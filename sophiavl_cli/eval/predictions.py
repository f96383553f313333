"""Existing predictions to score: sophiavl's JSONL or VLMEvalKit's `.xlsx`/`.tsv` result files.

- JSONL (what `sophiavl eval` writes): one object per line with `index` and `prediction` (or
  `response`), optionally `benchmark`.
- VLMEvalKit tables: the benchmark's TSV columns plus `prediction`; when the data columns are
  there, the file alone is enough to score (no `--data` needed).

A file for another benchmark is caught three ways, each a one-line error naming file and row: a
`benchmark` field that disagrees, a file name carrying another benchmark's VLMEvalKit name, or an
index the benchmark data does not have.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks import BENCHMARKS, get_benchmark
from sophiavl_cli.eval.benchmarks.base import TSV, Benchmark, Sample
from sophiavl_cli.eval.data import read_table, samples_from_table


@dataclass(frozen=True)
class Predictions:
    """Responses by sample index, with where each came from; `samples` when the file holds the data."""

    path: Path
    responses: dict[str, str]
    origins: dict[str, str]
    samples: list[Sample] | None = field(default=None)
    duplicates: dict[str, list[str]] = field(default_factory=dict)  # index -> every row giving it


def read_predictions(path: Path, bench: Benchmark) -> Predictions:
    """Read a predictions file for `bench` (format by suffix: .jsonl, .tsv, .xlsx)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"--predictions {path}: no such file")
    _check_file_name(path, bench)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path, bench)
    if suffix in (".tsv", ".xlsx"):
        return _read_table(path, bench)
    raise UserError(f"--predictions {path}: unknown format {suffix!r}; use .jsonl, .tsv or .xlsx")


def _check_file_name(path: Path, bench: Benchmark) -> None:
    """VLMEvalKit names result files `<model>_<DATASET>.xlsx`: another dataset's name is a mistake."""
    stem = path.stem.lower()
    if bench.tsv_name.lower() in stem or bench.name.lower() in stem:
        return
    for other in BENCHMARKS.values():
        if other is not bench and re.search(
            rf"(^|[_\-.]){re.escape(other.tsv_name.lower())}($|[_\-.])", stem
        ):
            raise UserError(
                f"{path}: the file name says {other.tsv_name}, not {bench.name}; pass --bench {other.name} "
                "or the right predictions file"
            )


def _read_jsonl(path: Path, bench: Benchmark) -> Predictions:
    responses: dict[str, str] = {}
    origins: dict[str, str] = {}
    seen: dict[str, list[str]] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            origin = f"{path} row {number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{origin}: not valid JSON ({exc.msg}); one JSON object per line") from exc
            if not isinstance(record, dict) or "index" not in record:
                raise UserError(f"{origin}: each line needs an `index` and a `prediction` field")
            named = record.get("benchmark")
            if named and get_benchmark(str(named)).name != bench.name:
                raise UserError(
                    f"{origin}: this prediction is for {named}, not {bench.name}; pass --bench {named} "
                    "or the right predictions file"
                )
            text = record.get("prediction", record.get("response"))
            if text is None:
                raise UserError(f"{origin}: no `prediction` (or `response`) field")
            index = str(record["index"])
            seen.setdefault(index, []).append(origin)
            responses[index] = str(text)  # the last line of an index wins (a rerun appends)
            origins[index] = origin
    return Predictions(path, responses, origins, duplicates=_repeated(seen))


def _repeated(seen: dict[str, list[str]]) -> dict[str, list[str]]:
    return {index: rows for index, rows in seen.items() if len(rows) > 1}


def _read_table(path: Path, bench: Benchmark) -> Predictions:
    columns, rows = read_table(path)
    for needed in ("index", "prediction"):
        if needed not in columns:
            raise UserError(
                f"{path}: column {needed!r} is missing; a VLMEvalKit result file has index and prediction"
            )
    responses = {str(r["index"]).strip(): str(r["prediction"]) for r in rows}
    origins = {str(r["index"]).strip(): f"{path} row {n}" for n, r in enumerate(rows, start=1)}
    seen: dict[str, list[str]] = {}
    for number, row in enumerate(rows, start=1):
        seen.setdefault(str(row["index"]).strip(), []).append(f"{path} row {number}")
    has_data = all(c in columns for c in bench.required_columns.get(TSV, ()))
    samples = samples_from_table(bench, path) if has_data else None
    if samples is not None:  # a repeated prediction row repeats its data row: keep the first
        unique: dict[str, Sample] = {}
        for sample in samples:
            unique.setdefault(sample.index, sample)
        samples = list(unique.values())
    return Predictions(path, responses, origins, samples, duplicates=_repeated(seen))


def data_pool(bench: Benchmark, predictions: Predictions, samples: Sequence[Sample] | None) -> list[Sample]:
    """Every sample the predictions should answer: the file's own data rows, else `samples`."""
    pool = predictions.samples if predictions.samples is not None else samples
    if pool is None:
        raise UserError(
            f"{predictions.path}: holds predictions only; pass --data with the {bench.name} data to score it"
        )
    return list(pool)


def pair_with_samples(bench: Benchmark, predictions: Predictions, pool: Sequence[Sample]) -> list[Sample]:
    """The samples the predictions answer, in data order; an unknown index is a one-line error."""
    by_index = {s.index: s for s in pool}
    for index, origin in predictions.origins.items():
        if index not in by_index:
            raise UserError(
                f"{origin}: index {index!r} is not in the {bench.name} data; is this a predictions file "
                "for another benchmark or split?"
            )
    return [s for s in pool if s.index in predictions.responses]


def coverage_problem(bench: Benchmark, predictions: Predictions, pool: Sequence[Sample]) -> str | None:
    """A one-line account of missing and duplicate items, or None when every item is there once."""
    missing = [s.index for s in pool if s.index not in predictions.responses]
    parts = []
    if missing:
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        parts.append(f"{len(missing)} of {len(pool)} {bench.name} items have no prediction (index {shown})")
    if predictions.duplicates:
        dup = sorted(predictions.duplicates)
        shown = ", ".join(dup[:5]) + (", ..." if len(dup) > 5 else "")
        parts.append(f"{len(dup)} indexes appear more than once, the last line wins (index {shown})")
    return f"{predictions.path}: " + "; ".join(parts) if parts else None
