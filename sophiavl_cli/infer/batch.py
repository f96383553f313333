"""Batch inference: `requests.jsonl` in, `answers.jsonl` out, resumable.

Request rows: `{"id": "q1", "images": ["a.png"], "prompt": "...", "type": "numerical",
"options": [...]}`; `id` and `options` are optional, `images` may be one path or a list (relative
paths are taken from the request file's folder, then the working folder), `problem_type` is
accepted for `type`. Every row is validated (JSON, fields, unique ids, and every image opened far
enough to read its header: missing, not an image, a decompression bomb) before the model loads
(`plan_batch`), so a typo on line 9,000 fails in a second, not after an hour. Every error names
the input line; so does an image that turns out not to decode while its row is answered (the
answers of earlier batches are kept).

Resume: each answer line carries the request's key, its `id` or, without one, its line number
(`line`, 1-based). A rerun skips keys already in the output, so an interrupted run keeps what it
did. Answers are appended and flushed (fsync) after each batch; a last line cut short by a kill
is dropped before appending, so the file stays valid JSON lines.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import JsonlAppender, cut_partial_line, read_jsonl
from sophiavl_cli.infer.inferencer import GenerationSettings, Inferencer, InferRequest

_FIELDS = {"id", "images", "image", "prompt", "type", "problem_type", "options"}


@dataclass(frozen=True)
class BatchRow:
    """One request of the input file and the key its answer is stored under."""

    line: int
    key: str
    request: InferRequest


@dataclass(frozen=True)
class BatchSummary:
    total: int
    skipped: int  # answered by an earlier run
    answered: int
    seconds: float
    completion_tokens: int

    @property
    def answers_per_s(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "rows": self.total,
            "skipped": self.skipped,
            "answered": self.answered,
            "seconds": round(self.seconds, 3),
            "answers_per_s": round(self.answers_per_s, 3),
            "completion_tokens": self.completion_tokens,
            "tokens_per_s": round(self.tokens_per_s, 2),
        }


def row_key(row_id: str | None, line: int) -> str:
    """`id:<id>` when the row has an id, else `line:<n>`."""
    return f"id:{row_id}" if row_id is not None else f"line:{line}"


def read_requests(path: Path) -> list[BatchRow]:
    """Every request of a JSON-lines file, validated; errors name the file, line and field."""
    if not path.is_file():
        raise UserError(f"--input {path} does not exist; pass a JSON-lines file of requests")
    rows: list[BatchRow] = []
    seen: dict[str, int] = {}
    for line, raw in _lines(path):
        where = f"{path} line {line}"
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg}, column {exc.colno}); fix the line") from exc
        if not isinstance(data, dict):
            raise UserError(f"{where}: a request must be a JSON object with images, prompt and type")
        unknown = sorted(set(data) - _FIELDS)
        if unknown:
            raise UserError(
                f"{where}: unknown field(s) {', '.join(unknown)}; use {', '.join(sorted(_FIELDS))}"
            )
        kind = data.get("type", data.get("problem_type"))
        if kind is None:
            raise UserError(f"{where}: field type is missing; set it to numerical, multiple choice, OCR, ...")
        images = data.get("images", data.get("image")) or []
        images = [images] if isinstance(images, str) else images
        if not isinstance(images, list):
            raise UserError(f"{where}: field images must be a path or a list of paths")
        row_id = data.get("id")
        if row_id is not None and not isinstance(row_id, str | int):
            raise UserError(f"{where}: field id must be a string or a number")
        request = InferRequest.create(
            prompt=data.get("prompt", ""),
            problem_type=str(kind),
            images=images,
            options=data.get("options"),
            id=None if row_id is None else str(row_id),
            base=path.parent,
            where=where,
        )
        key = row_key(request.id, line)
        if key in seen:
            raise UserError(f"{where}: id {request.id!r} repeats line {seen[key]}; ids must be unique")
        seen[key] = line
        rows.append(BatchRow(line, key, request))
    return rows


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8") as handle:
            for number, text in enumerate(handle, start=1):
                if text.strip():
                    yield number, text
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text ({exc.reason}); re-save it as UTF-8") from exc


def answered_keys(output: Path) -> set[str]:
    """Keys already in the output file; a torn last line (killed mid-write) is cut off first."""
    if not output.exists():
        return set()
    cut_partial_line(output)
    keys = set()
    for number, record in enumerate(read_jsonl(output), start=1):
        if not isinstance(record, dict) or "key" not in record:
            raise UserError(
                f"--output {output} record {number} is not an answer line of sophiavl infer; pass another --output"
            )
        keys.add(str(record["key"]))
    return keys


@dataclass(frozen=True)
class BatchPlan:
    """A validated batch: every request of the input, and those the output does not hold yet."""

    input_path: Path
    output_path: Path
    rows: list[BatchRow]
    todo: list[BatchRow]


def plan_batch(input_path: Path, output_path: Path) -> BatchPlan:
    """Read and validate the whole input and the answers already written; no model needed."""
    if output_path.resolve() == input_path.resolve():
        raise UserError("--output must differ from --input; answers are appended to the output file")
    rows = read_requests(input_path)
    done = answered_keys(output_path)
    return BatchPlan(input_path, output_path, rows, [row for row in rows if row.key not in done])


def run_batch(
    inferencer: Inferencer,
    input_path: Path | BatchPlan,
    output_path: Path | None,
    settings: GenerationSettings,
    *,
    batch_size: int | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> BatchSummary:
    """Answer the rows of `input_path` not yet in `output_path`, appending as each batch finishes.

    `input_path` may be a `plan_batch` made before the model loaded (then `output_path` is None).
    `batch_size` rows are handed to the backend at a time (default: all at once for vLLM, whose
    scheduler batches internally, and the hf backend's own batch size otherwise); `on_progress(done,
    total)` is called after each.
    """
    if isinstance(input_path, BatchPlan):
        plan = input_path
    else:
        assert output_path is not None, "run_batch: an input file needs its output file"
        plan = plan_batch(input_path, output_path)
    rows, todo, output_path = plan.rows, plan.todo, plan.output_path
    skipped = len(rows) - len(todo)
    step = batch_size or (
        len(todo) if inferencer.backend.name == "vllm" else getattr(inferencer.backend, "batch_size", 8)
    )
    step = max(step, 1)
    start = time.perf_counter()
    tokens = 0
    if on_progress:
        on_progress(skipped, len(rows))
    with JsonlAppender(output_path, durable=True) as out:
        for first in range(0, len(todo), step):
            chunk = todo[first : first + step]
            results = inferencer.generate([row.request for row in chunk], settings)
            tokens += sum(result.completion_tokens for result in results)
            out.write(
                *(
                    {"key": row.key, "line": row.line, **result.to_json()}
                    for row, result in zip(chunk, results, strict=True)
                )
            )
            if on_progress:
                on_progress(skipped + first + len(chunk), len(rows))
    return BatchSummary(len(rows), skipped, len(todo), time.perf_counter() - start, tokens)
