"""Pre-flight check of a dataset: find the rows that would break or silently spoil a training run.

Run on registration and on demand (`sophiavl dataset check`). It loads the data as training does
(same column mapping, same prompt builder) and records, per row:
- a missing or unknown `problem_type` (the released code scored those as `numerical`);
- an empty prompt or answer (an answer of just `<answer></answer>` counts as empty);
- a multiple-choice row without options, an image row without an image;
- images that are missing or do not decode (each distinct image decoded once, in a thread pool);
- with a model: prompts longer than `max_prompt_length` tokens, image tokens included, counted the
  way the model's processor expands them.
Images outside `min_pixels..max_pixels` are counted but not faults: they are resized.

The result is a `CheckReport`; the CLI renders it and writes the bad rows as JSON lines.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_cli.data.images import describe, open_image
from sophiavl_cli.data.length import char_ceiling
from sophiavl_cli.data.loader import Rows, check_mapping, problem_type_faults
from sophiavl_cli.data.problem_types import valid_types
from sophiavl_cli.data.prompts import build_messages
from sophiavl_cli.data.registry import DatasetEntry
from sophiavl_cli.data.sources import Table, entry_splits, read_split
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_write_text

_ANSWER_TAGS = re.compile(r"</?answer>")
_TOKEN_CHUNK = 512
_CHUNK_CHARS = 4_000_000  # texts tokenized per call: bounds the tokenizer's memory, not just the row count


@dataclass(frozen=True)
class Fault:
    """One problem with one row (`row` is 0-based within its split; `where` names file and row)."""

    source: str
    split: str
    row: int
    where: str
    field: str
    message: str


@dataclass
class CheckReport:
    rows: dict[tuple[str, str], Counter[str]] = field(default_factory=dict)  # (source, split) -> type counts
    faults: list[Fault] = field(default_factory=list)
    num_images: int = 0
    images_outside_bounds: int = 0
    max_prompt_tokens: int | None = None  # None when no model was given

    @property
    def num_rows(self) -> int:
        return sum(sum(counter.values()) for counter in self.rows.values())

    @property
    def bad_rows(self) -> dict[tuple[str, str, int], list[Fault]]:
        """Faults grouped by row, rows in file order."""
        grouped: dict[tuple[str, str, int], list[Fault]] = {}
        for fault in self.faults:
            grouped.setdefault((fault.source, fault.split, fault.row), []).append(fault)
        return dict(sorted(grouped.items(), key=lambda item: item[0]))

    @property
    def ok(self) -> bool:
        return not self.faults

    @property
    def dataset_faults(self) -> list[Fault]:
        """Faults of a whole dataset (row -1), which skipping rows cannot fix."""
        return [fault for fault in self.faults if fault.row < 0]

    def faults_by_field(self) -> Counter[str]:
        return Counter(fault.field for fault in self.faults)

    def skip_rows(self) -> dict[str, list[int]]:
        """Bad row indices per split, the registry entry's `skip_rows` value."""
        skip: dict[str, set[int]] = {}
        for _, split, row in self.bad_rows:
            if row >= 0:
                skip.setdefault(split, set()).add(row)
        return {split: sorted(rows) for split, rows in skip.items()}

    def write_bad_rows(self, path: Path) -> Path:
        """One JSON line per bad row: source, split, row (0-based), where, and its faults."""
        lines = []
        for (source, split, row), faults in self.bad_rows.items():
            record = {
                "source": source,
                "split": split,
                "row": row,
                "where": faults[0].where,
                "faults": [{"field": f.field, "message": f.message} for f in faults],
            }
            lines.append(json.dumps(record, ensure_ascii=False))
        atomic_write_text(Path(path), "".join(line + "\n" for line in lines))
        return Path(path)


@dataclass(frozen=True)
class CheckOptions:
    min_pixels: int = 262144
    max_pixels: int = 4194304
    model: str | None = None  # a model reference; enables the prompt length check
    max_prompt_length: int = 8192
    preset: str = "sophiavl-r1"
    template: str | None = None
    extra_types: tuple[str, ...] = ()
    workers: int = 8


def entry_tables(entry: DatasetEntry, splits: Iterable[str] | None = None) -> list[Table]:
    """Every split of a (possibly not yet registered) entry, mapped and ready to check."""
    tables = []
    for split in splits if splits is not None else entry_splits(entry):
        table = read_split(entry, split)
        check_mapping(table)
        tables.append(table)
    return tables


def check_tables(
    tables: list[Table], options: CheckOptions, *, on_image: Callable[[int, int], None] | None = None
) -> CheckReport:
    """Check every row of `tables`; `on_image(done, total)` is called as images are inspected."""
    report = CheckReport()
    rows = Rows(tables)
    for table in tables:
        for index, message in problem_type_faults(table, options.extra_types):
            _add(report, table, index, "problem_type", message)

    # Image keys: a path (each distinct file is decoded once) or (row, position) for in-memory bytes,
    # which are fetched again by the worker so a parquet set's bytes are never all in memory at once.
    row_images: list[list[ImageKey]] = []
    for index in range(len(rows)):
        row = rows[index]
        origin = rows.origin(index)
        report.rows.setdefault((origin.source, origin.split), Counter())[
            row["problem_type"] or "(missing)"
        ] += 1
        _row_faults(report, rows, index, row)
        row_images.append([_image_key(ref, index, position) for position, ref in enumerate(row["images"])])

    results = _inspect_images(rows, row_images, options, on_image)
    report.num_images = len(results)
    for index, keys in enumerate(row_images):
        for key in keys:
            result = results[key]
            if isinstance(result, str):
                _add_row(report, rows, index, "images", result)
    report.images_outside_bounds = sum(
        1
        for result in results.values()
        if not isinstance(result, str)
        and not options.min_pixels <= result[0] * result[1] <= options.max_pixels
    )
    if options.model is not None:
        _check_prompt_lengths(report, rows, row_images, results, options)
    return report


ImageKey = str | tuple[int, int]


def _image_key(ref: Any, index: int, position: int) -> ImageKey:
    if isinstance(ref, str):
        return ref
    if isinstance(ref, dict) and not ref.get("bytes") and ref.get("path"):
        return str(ref["path"])
    return (index, position)


def _add(report: CheckReport, table: Table, row: int, field_name: str, message: str) -> None:
    where = table.where(row) if row >= 0 else table.label
    report.faults.append(Fault(table.source, table.split, row, where, field_name, message))


def _add_row(report: CheckReport, rows: Rows, index: int, field_name: str, message: str) -> None:
    origin = rows.origin(index)
    report.faults.append(Fault(origin.source, origin.split, origin.row, origin.where, field_name, message))


def _row_faults(report: CheckReport, rows: Rows, index: int, row: dict[str, Any]) -> None:
    if not row["prompt"].strip():
        _add_row(report, rows, index, "prompt", "empty prompt")
    if not _ANSWER_TAGS.sub("", row["answer"]).strip():
        _add_row(report, rows, index, "answer", "empty answer")
    if row["problem_type"] == "multiple choice" and not row["options"]:
        _add_row(report, rows, index, "options", "multiple-choice row without options")
    if row["data_type"] == "image" and not row["images"]:
        _add_row(report, rows, index, "images", "data_type is image but the row has no image")


ImageResult = tuple[int, int] | str  # (width, height), or why the image cannot be used


def _inspect_images(
    rows: Rows,
    row_images: list[list[ImageKey]],
    options: CheckOptions,
    on_image: Callable[[int, int], None] | None,
) -> dict[ImageKey, ImageResult]:
    """Decode each distinct image once, in parallel (PIL releases the GIL while decoding)."""
    keys = list(dict.fromkeys(key for keys in row_images for key in keys))

    def inspect(key: ImageKey) -> ImageResult:
        if isinstance(key, str):
            return _decode(key)
        index, position = key
        return _decode(rows[index]["images"][position])

    results: dict[ImageKey, ImageResult] = {}
    with ThreadPoolExecutor(max_workers=max(1, options.workers)) as pool:
        for done, (key, result) in enumerate(zip(keys, pool.map(inspect, keys), strict=True), start=1):
            results[key] = result
            if on_image is not None:
                on_image(done, len(keys))
    return results


def _decode(ref: Any) -> ImageResult:
    try:
        image = open_image(ref)
        with image:
            image.load()
            return image.size
    except UserError as exc:
        return str(exc)
    except Exception as exc:  # any decoder failure is a bad image, whatever PIL raises
        return f"cannot decode image {describe(ref)} ({type(exc).__name__}: {exc}); replace or drop it"


def _check_prompt_lengths(
    report: CheckReport,
    rows: Rows,
    row_images: list[list[ImageKey]],
    results: dict[ImageKey, ImageResult],
    options: CheckOptions,
) -> None:
    """Prompt tokens = chat-template text tokens + each image's expanded placeholder count."""
    from sophiavl_cli.models.processing import VLProcessor
    from sophiavl_cli.models.resolve import resolve_model

    assert options.model is not None
    processor = VLProcessor.from_pretrained(
        resolve_model(options.model), min_pixels=options.min_pixels, max_pixels=options.max_pixels
    )
    pending: list[tuple[int, str, int]] = []  # (row index, prompt text, image tokens beyond the pads)
    pending_chars = 0
    ceiling = char_ceiling(processor.tokenizer, options.max_prompt_length)
    longest = 0
    allowed = set(valid_types(options.extra_types))
    for index, keys in enumerate(row_images):
        sizes = [results[key] for key in keys]
        row = rows[index]
        if any(isinstance(size, str) for size in sizes) or row["problem_type"] not in allowed:
            continue  # the image or type fault is reported already
        try:
            messages = build_messages(row, preset=options.preset, template=options.template)
            text = processor.apply_chat_template(messages)
        except UserError as exc:
            _add_row(report, rows, index, "prompt", str(exc))
            continue
        image_tokens = sum(processor.num_image_tokens(h, w) for w, h in sizes)  # type: ignore[misc]
        if len(text) > ceiling:  # over the limit for sure: never tokenized (data/length.py)
            longest = max(longest, options.max_prompt_length + 1)
            message = (
                f"prompt is over {options.max_prompt_length} tokens ({len(text):,} characters) > max_prompt_length; "
                "shorten it or drop the row"
            )
            _add_row(report, rows, index, "prompt", message)
            continue
        pending.append((index, text, image_tokens - len(sizes)))  # each pad is one token of the text
        pending_chars += len(text)
        if len(pending) >= _TOKEN_CHUNK or pending_chars >= _CHUNK_CHARS:
            longest = max(longest, _count_chunk(report, rows, processor, pending, options.max_prompt_length))
            pending, pending_chars = [], 0
    if pending:
        longest = max(longest, _count_chunk(report, rows, processor, pending, options.max_prompt_length))
    report.max_prompt_tokens = longest


def _count_chunk(
    report: CheckReport, rows: Rows, processor: Any, pending: list[tuple[int, str, int]], limit: int
) -> int:
    encoded = processor.tokenizer([text for _, text, _ in pending], add_special_tokens=False)["input_ids"]
    longest = 0
    for (index, _, extra), ids in zip(pending, encoded, strict=True):
        length = len(ids) + extra
        longest = max(longest, length)
        if length > limit:
            message = (
                f"prompt is {length} tokens (image tokens included) > max_prompt_length {limit}; "
                "shorten it, lower max_pixels or raise data.max_prompt_length"
            )
            _add_row(report, rows, index, "prompt", message)
    return longest
