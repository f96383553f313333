"""Benchmark data in either layout, found and detected automatically.

Layouts:
- **VLMEvalKit TSV** (`<NAME>.tsv`): `index`, `image` (base64, a list literal of base64 strings,
  or the `index` of another row holding the same image), `question`, `answer`, option columns
  `A`..., benchmark columns. Also what VLMEvalKit's prediction `.xlsx`/`.tsv` files hold.
- **Hugging Face** parquet files as the dataset repository stores them
  (`<split>-00000-of-00001.parquet`, per-config sub-folders for MMMU). Image columns are structs
  `{"bytes", "path"}`; a path is resolved against the folder.

Where the data comes from, in order: `--data PATH` (a `.tsv`, a `.parquet`, or a folder holding
either; `builtin` for the few sample rows per benchmark shipped with sophiavl); `$LMUData/<NAME>.tsv` (VLMEvalKit's cache); the dataset's snapshot in the local Hugging
Face cache (`sophiavl download`). Nothing here touches the network.

Images are kept as encoded bytes or paths; `open_image` decodes one when the runner needs it,
and a file that does not decode is a one-line error naming the file and row.
"""

from __future__ import annotations

import base64
import binascii
import csv
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from sophiavl_cli.data.images import load_image
from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks.base import HF, TSV, Benchmark, ImageSource, Sample
from sophiavl_cli.eval.matching import parse_list_literal

MAX_REFERENCE_LEN = 64  # VLMEvalKit: an `image` cell this short is another row's index


# ---------------------------------------------------------------------- finding the data


def lmu_data_dir() -> Path:
    """VLMEvalKit's data cache: `$LMUData`, default `~/LMUData`."""
    return Path(os.environ.get("LMUData", "~/LMUData")).expanduser()  # noqa: SIM112 (VLMEvalKit spells it so)


def resolve_data(data: Path | None) -> Path | None:
    """`--data` as a path: `builtin` is the folder of built-in sample TSVs (`eval/builtin.py`)."""
    if data is not None and str(data) == "builtin":
        from sophiavl_cli.eval.builtin import builtin_data_dir

        return builtin_data_dir()
    return data


def find_data(bench: Benchmark, data: Path | None) -> Path:
    """The file or folder holding `bench`'s data (see the module docstring for the order)."""
    data = resolve_data(data)
    if data is not None:
        data = Path(data).expanduser()
        if not data.exists():
            raise UserError(f"--data {data}: no such file or folder; pass a .tsv, a .parquet or a folder")
        return data
    tsv = lmu_data_dir() / f"{bench.tsv_name}.tsv"
    if tsv.is_file():
        return tsv
    cached = _hf_snapshot(bench.hf_repo)
    if cached is not None:
        return cached
    raise UserError(
        f"no local data for {bench.name}: pass --data (a VLMEvalKit {bench.tsv_name}.tsv or the {bench.hf_repo} "
        f"parquet files), put {bench.tsv_name}.tsv in {lmu_data_dir()}, or run "
        f"`sophiavl download {bench.hf_repo} --repo-type dataset`"
    )


def _hf_snapshot(repo_id: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, repo_type="dataset", local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, ValueError, OSError):
        return None


def load_samples(
    bench: Benchmark, data: Path | None, split: str | None = None, limit: int | None = None
) -> list[Sample]:
    """All samples of `bench` (first `limit` if given), from whichever layout `data` holds."""
    source = find_data(bench, data)
    split = split or bench.default_split
    if source.is_file() and source.suffix.lower() in (".tsv", ".xlsx"):
        samples = samples_from_table(bench, source, split)
    elif source.is_file() and source.suffix.lower() == ".parquet":
        samples = _samples_from_parquet(bench, [source], source.parent)
    elif source.is_dir():
        tsvs = _named_tsvs(bench, source)
        if tsvs:
            samples = samples_from_table(bench, tsvs[0], split)
        else:
            samples = _samples_from_parquet(bench, _split_parquets(bench, source, split), source)
    else:
        raise UserError(f"--data {source}: expected a .tsv, .xlsx, .parquet file or a folder")
    _check_unique(samples, source)
    return samples[:limit] if limit else samples


def _named_tsvs(bench: Benchmark, folder: Path) -> list[Path]:
    tsvs = sorted(folder.glob("*.tsv"))
    named = [p for p in tsvs if p.stem.lower() in (bench.tsv_name.lower(), bench.name.lower())]
    return named or (tsvs if len(tsvs) == 1 else [])


def _check_unique(samples: Sequence[Sample], source: Path) -> None:
    seen: dict[str, str] = {}
    for sample in samples:
        if sample.index in seen:
            raise UserError(
                f"{sample.origin}: index {sample.index!r} repeats {seen[sample.index]}; indexes must be unique"
            )
        seen[sample.index] = sample.origin
    if not samples:
        raise UserError(f"{source}: no rows found; check the file and --split")


# ---------------------------------------------------------------------- VLMEvalKit tables


def read_table(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) of a `.tsv` or `.xlsx` file (cells as read; empty cells become "")."""
    if path.suffix.lower() == ".xlsx":
        return _read_xlsx(path)
    csv.field_size_limit(sys.maxsize)  # base64 images are far longer than csv's default 128 KiB
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise UserError(f"{path}: cannot read as a tab-separated file ({exc})") from exc
    return columns, rows


def _read_xlsx(path: Path) -> tuple[list[str], list[dict[str, Any]]]:
    try:
        import openpyxl
    except ImportError as exc:
        from sophiavl_cli.errors import MissingExtraError

        raise MissingExtraError("openpyxl", "eval", f"reading {path.name}") from exc
    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises zipfile/KeyError/InvalidFileException on bad files
        raise UserError(f"{path}: cannot read as an Excel workbook ({exc})") from exc
    sheet = book.worksheets[0]
    lines = sheet.iter_rows(values_only=True)
    header = [str(c) if c is not None else "" for c in next(lines, ())]
    rows = [{h: ("" if v is None else v) for h, v in zip(header, line, strict=False)} for line in lines]
    book.close()
    return header, rows


def samples_from_table(bench: Benchmark, path: Path, split: str | None = None) -> list[Sample]:
    """Samples of a VLMEvalKit-layout table; rows of other splits are dropped when a `split` column exists."""
    columns, rows = read_table(path)
    bench.check_columns(columns, TSV, str(path))
    by_index = {str(row.get("index", "")).strip(): row for row in rows}
    has_split = "split" in columns and bench.name == "MMMU"
    samples: list[Sample] = []
    for number, row in enumerate(rows, start=1):
        if has_split and split and str(row.get("split", "")).strip() not in ("", split):
            continue
        origin = f"{path} row {number}"
        images, ref = _tsv_images(row, by_index, origin)
        record = {**row, "image_ref": ref} if ref else row
        samples.append(bench.from_record(record, TSV, origin, images))
    return samples


def _tsv_images(
    row: Mapping[str, Any], by_index: Mapping[str, Mapping[str, Any]], origin: str
) -> tuple[tuple[ImageSource, ...], str]:
    """(decoded image bytes, the index whose cell holds the image) of one TSV row."""
    cell = str(row.get("image") or "").strip()
    if not cell:
        return (), ""
    items = parse_list_literal(cell) if cell.startswith("[") else [cell]
    if items is None:
        raise UserError(f"{origin}: the image cell starts with '[' but is not a list of base64 strings")
    out: list[ImageSource] = []
    root = str(row.get("index", "")).strip()
    for item in items:
        if len(item) <= MAX_REFERENCE_LEN:  # a reference to another row's image
            target = by_index.get(item)
            if target is None or len(str(target.get("image") or "")) <= MAX_REFERENCE_LEN:
                raise UserError(f"{origin}: image refers to index {item!r}, which has no image of its own")
            root = item
            item = str(target["image"]).strip()
            nested = parse_list_literal(item) if item.startswith("[") else None
            if nested:
                out.extend(_b64(x, origin) for x in nested)
                continue
        out.append(_b64(item, origin))
    return tuple(out), root


def _b64(cell: str, origin: str) -> bytes:
    try:
        return base64.b64decode(cell, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise UserError(f"{origin}: the image cell is not valid base64 ({exc}); re-export the TSV") from exc


# ---------------------------------------------------------------------- Hugging Face parquet


def _split_parquets(bench: Benchmark, folder: Path, split: str) -> list[Path]:
    files = sorted(folder.rglob("*.parquet"))
    if not files:
        raise UserError(
            f"{folder}: no .tsv or .parquet files for {bench.name}; pass the dataset folder or a TSV"
        )

    def split_of(path: Path) -> str:
        return path.stem.split("-")[0]

    if bench.hf_configs:  # e.g. MMBench's `en` next to `cn` and `cc`: read only the named configs
        in_configs = [p for p in files if set(p.relative_to(folder).parts[:-1]) & set(bench.hf_configs)]
        files = in_configs or files

    chosen = [p for p in files if split_of(p) == split or p.parent.name == split]
    if not chosen:
        found = sorted({split_of(p) for p in files})
        raise UserError(
            f"{folder}: no parquet file for split {split!r} (found {', '.join(found)}); pass --split"
        )
    return chosen


def _samples_from_parquet(bench: Benchmark, files: Sequence[Path], base: Path) -> list[Sample]:
    import pyarrow.parquet as pq

    samples: list[Sample] = []
    for path in files:
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid/OSError on corrupt or non-parquet files
            raise UserError(f"{path}: cannot read as parquet ({exc})") from exc
        bench.check_columns(table.column_names, HF, str(path))
        for number, record in enumerate(_rows(table), start=1):
            origin = f"{path} row {number}"
            samples.append(bench.from_record(record, HF, origin, _hf_images(bench, record, base, origin)))
    return samples


def _rows(table: Any) -> Iterator[dict[str, Any]]:
    for batch in table.to_batches(max_chunksize=256):
        yield from batch.to_pylist()


def _hf_images(
    bench: Benchmark, record: Mapping[str, Any], base: Path, origin: str
) -> tuple[ImageSource, ...]:
    found: list[ImageSource] = []
    for column in bench.hf_image_columns:
        value = record.get(column)
        values = value if isinstance(value, list) else [value]
        got = [src for v in values if (src := _hf_image(v, base, origin)) is not None]
        found.extend(got)
        if got and bench.hf_image_alternatives:
            break
    return tuple(found)


def _hf_image(value: Any, base: Path, origin: str) -> ImageSource | None:
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return bytes(value["bytes"])
        value = value.get("path")
    if isinstance(value, bytes | bytearray):
        return bytes(value) if value else None
    if isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        return path if path.is_file() else None
    return None


# ---------------------------------------------------------------------- decoding


def open_image(source: ImageSource, origin: str) -> Image.Image:
    """Decode one image to RGB; a broken one (a decompression bomb included) is a one-line error
    naming the file and row (`data.images.load_image`, the one way images are opened)."""
    return load_image(source, where=origin)
