"""Reading one split of one dataset from wherever it lives, before any column mapping.

A data spec entry names a registry entry, `builtin:demo`, a `.json` / `.jsonl` / `.parquet` file, a
folder of parquet files, or a hub dataset id. This module turns it into a `Table`: the raw rows
(a list of dicts for json, a memory-mapped `datasets.Dataset` for parquet and hub data) plus what
the loader needs to map them (columns, image base, default type, rows to skip).

JSON is parsed here rather than by `datasets`, so a bad byte or line is reported with its line
number, and rows whose fields differ in type (an answer that is sometimes a number) load as given.
Image features of parquet/hub data are left undecoded: rows carry the `{bytes, path}` dict.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_cli.data.registry import RELEASED_COLUMNS, DatasetEntry, get_entry, parse_entry, read_registry
from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import dataset_repo_id

BUILTIN_DEMO = "builtin:demo"
BUILTIN_THINKING_DEMO = "builtin:thinking-demo"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")
_SPLIT = re.compile(r"^[A-Za-z0-9_.\-]+$")
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")


@dataclass
class Table:
    """One split of one dataset, as stored (source column names)."""

    source: str  # what rows report as their `source`
    split: str
    label: str  # file / folder / hub id, for messages
    data: Any  # list[dict] | datasets.Dataset
    columns: list[str]
    mapping: dict[str, str]
    image_base: Path | None
    default_type: str | None = None
    skip_rows: list[int] = field(default_factory=list)
    lines: list[int] | None = None  # json-lines: the file line of each row

    def __len__(self) -> int:
        return len(self.data)

    def where(self, index: int) -> str:
        """`file: line N` for json-lines, `file: row N` (1-based) otherwise."""
        if self.lines is not None:
            return f"{self.label}: line {self.lines[index]}"
        return f"{self.label}: row {index + 1}"

    def require_rows(self) -> None:
        """An empty file (or `[]`) has no columns either: say what it is, not a mapping problem."""
        if len(self) == 0:
            raise UserError(f"no rows in {self.label}; add rows to it or take it out of the data spec")

    def source_column(self, internal: str) -> str | None:
        """The stored column that becomes `internal` after mapping (None when there is none)."""
        for src, dst in self.mapping.items():
            if dst == internal and src in self.columns:
                return src
        return internal if internal in self.columns and internal not in self.mapping else None


# --------------------------------------------------------------------------- specs


def parse_spec(spec: str) -> list[tuple[str, str | None]]:
    """`"a@train, b.json"` -> `[("a", "train"), ("b.json", None)]`; `@` splits only a plain suffix."""
    entries = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, split = part.rpartition("@")
        if sep and name and _SPLIT.match(split):
            entries.append((name, split))
        else:
            entries.append((part, None))
    if not entries:
        raise UserError(f"data spec {spec!r} names no dataset; give a registry name, file or builtin:demo")
    return entries


def resolve_entry(name: str, registry: Path) -> DatasetEntry:
    """A registry entry for `name`: registered, builtin:demo's, or synthesised for a file/hub id."""
    if name.startswith("builtin:"):
        if name not in _builtin_datasets():
            known = ", ".join(_builtin_datasets())
            raise UserError(f"unknown built-in dataset {name!r}; the built-in ones are {known}")
        folder = _builtin_datasets()[name][0]()
        return DatasetEntry(name=name, file_path=str(folder), registry=folder / "dataset_info.json")
    if name in read_registry(registry):
        return get_entry(name, registry)
    path = Path(name).expanduser()
    if path.exists() or path.suffix in DATA_SUFFIXES or name.startswith((".", "/", "~")):
        if not path.exists():
            raise UserError(f"data file {name} does not exist; fix the path (or register the dataset)")
        return DatasetEntry(name=path.name, file_path=str(path.resolve()))
    repo_id = dataset_repo_id(name)  # short aliases such as sophiavl-r1-130k
    if _HUB_ID.match(repo_id):
        return DatasetEntry(name=name, file_path=repo_id)
    known = ", ".join(sorted(read_registry(registry))) or "none"
    raise UserError(
        f"dataset {name!r} is not in registry {registry} (registered: {known}), not a file and not a hub id; "
        "register it with `sophiavl register-dataset` or give a path"
    )


def local_data_path(entry: DatasetEntry) -> Path:
    """The entry's data path; a local-looking path that does not exist is an error, not a hub id."""
    path = entry.resolve_path(entry.file_path)
    looks_local = path.suffix in DATA_SUFFIXES or entry.file_path.startswith((".", "/", "~"))
    if not path.exists() and (looks_local or not _HUB_ID.match(entry.file_path)):
        where = f"registry {entry.registry}: " if entry.registry else ""
        raise UserError(
            f"{where}dataset {entry.name!r}: file_path {path} does not exist; fix the path "
            "(re-register with --force) or give a hub id as owner/name"
        )
    return path


def entry_splits(entry: DatasetEntry) -> list[str]:
    """The splits a dataset has (json and single parquet files have one: `train`)."""
    if entry.name in _builtin_datasets():
        return list(_builtin_datasets()[entry.name][1])
    path = local_data_path(entry)
    if path.is_file():
        return ["train"]
    return list(_load_hf(entry, None).keys())


# --------------------------------------------------------------------------- reading


def read_split(entry: DatasetEntry, split: str | None) -> Table:
    """Read one split of `entry` (default `train`) into a `Table`."""
    split = split or "train"
    if entry.name in _builtin_datasets():
        return _read_builtin(entry, split)
    return _read_stored(entry, split)


def _read_stored(entry: DatasetEntry, split: str) -> Table:
    path = local_data_path(entry)
    if path.is_file():
        if split != "train":
            raise UserError(
                f"{path} is a single file with one split, `train`, but split {split!r} was asked for; "
                "register the other split's file under its own name"
            )
        if path.suffix == ".parquet":
            data = _load_hf(entry, "train", path=path)
            return _table(entry, split, str(path), data, list(data.column_names), image_home=path.parent)
        rows, lines = read_json_rows(path)
        return _table(entry, split, str(path), rows, _union_keys(rows), image_home=path.parent, lines=lines)
    data = _load_hf(entry, split)
    label = str(path) if path.is_dir() else entry.file_path
    return _table(
        entry, split, label, data, list(data.column_names), image_home=path if path.is_dir() else None
    )


def _builtin_datasets() -> dict[str, tuple[Any, dict[str, int], str]]:
    """Built-in name -> (build-or-find function, split sizes, registry entry prefix)."""
    from sophiavl_cli.data import demo, thinking_demo

    return {
        BUILTIN_DEMO: (demo.resolve_demo, demo.SPLIT_SIZES, "demo_"),
        BUILTIN_THINKING_DEMO: (
            thinking_demo.resolve_thinking_demo,
            thinking_demo.SPLIT_SIZES,
            "thinking_demo_",
        ),
    }


def _read_builtin(entry: DatasetEntry, split: str) -> Table:
    _, sizes, prefix = _builtin_datasets()[entry.name]
    if split not in sizes:
        raise UserError(f"{entry.name} has splits {', '.join(sizes)}, not {split!r}")
    assert entry.registry is not None
    raw = read_registry(entry.registry)[f"{prefix}{split}"]
    table = _read_stored(parse_entry(entry.name, raw, entry.registry), "train")
    table.split = split
    return table


def _table(
    entry: DatasetEntry,
    split: str,
    label: str,
    data: Any,
    columns: list[str],
    *,
    image_home: Path | None,
    lines: list[int] | None = None,
) -> Table:
    mapping = dict(entry.columns)
    if not mapping and "prompt" not in columns:
        # An unregistered file in the SophiaVL-R1-130k layout: apply the released mapping.
        mapping = {src: dst for src, dst in RELEASED_COLUMNS.items() if src in columns and dst not in columns}
    return Table(
        source=entry.name,
        split=split,
        label=label,
        data=data,
        columns=columns,
        mapping=mapping,
        image_base=entry.image_base() or image_home,
        default_type=entry.problem_type,
        skip_rows=list(entry.skip_rows.get(split, [])),
        lines=lines,
    )


def _union_keys(rows: list[dict[str, Any]]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for key in row:
            seen.setdefault(key, None)
    return list(seen)


def read_json_rows(path: Path) -> tuple[list[dict[str, Any]], list[int] | None]:
    """Rows of a JSON array or JSON-lines file, and (for json-lines) each row's line number."""
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            f"{path}: line {line}: not valid UTF-8 ({exc.reason} at byte {exc.start}); re-save the file as UTF-8"
        ) from exc
    stripped = text.lstrip()
    if path.suffix != ".jsonl" and stripped.startswith(("[", "{")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            if not (stripped.startswith("{") and exc.msg == "Extra data"):
                raise UserError(
                    f"{path}: line {exc.lineno}: not valid JSON ({exc.msg}); fix the file"
                ) from exc
        else:
            rows = data if isinstance(data, list) else [data]
            _require_objects(path, rows, None)
            return rows, None
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {number}: not valid JSON ({exc.msg}); fix the line") from exc
        lines.append(number)
    _require_objects(path, rows, lines)
    return rows, lines


def _require_objects(path: Path, rows: list[Any], lines: list[int] | None) -> None:
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            where = f"line {lines[index]}" if lines else f"row {index + 1}"
            raise UserError(f"{path}: {where}: expected a JSON object per row, got {type(row).__name__}")


def _load_hf(entry: DatasetEntry, split: str | None, *, path: Path | None = None) -> Any:
    """Parquet file/folder or hub dataset through `datasets` (its cache; offline mode respected)."""
    import datasets

    folder = entry.resolve_path(entry.file_path)
    try:
        if path is not None:
            data = datasets.load_dataset("parquet", data_files=str(path), split=split)
        elif folder.is_dir():
            data = datasets.load_dataset("parquet", data_dir=str(folder), split=split)
        else:
            data = datasets.load_dataset(entry.file_path, split=split)
    except ValueError as exc:
        if "split" in str(exc).lower():
            raise UserError(f"dataset {entry.name!r}: {str(exc).splitlines()[0]}") from exc
        raise UserError(f"dataset {entry.name!r} ({entry.file_path}): {str(exc).splitlines()[0]}") from exc
    except Exception as exc:  # datasets raises many types for "not there" (offline, missing, gated)
        if path is not None or folder.is_dir():
            raise UserError(f"cannot read parquet data {path or folder}: {str(exc).splitlines()[0]}") from exc
        raise UserError(
            f"hub dataset {entry.file_path!r} could not be loaded ({type(exc).__name__}); offline it must already "
            "be in the datasets cache: download it first, or register a local copy with --file-path"
        ) from exc
    if isinstance(data, datasets.DatasetDict):
        return datasets.DatasetDict({name: _undecoded_images(ds) for name, ds in data.items()})
    return _undecoded_images(data)


def _undecoded_images(data: Any) -> Any:
    """Keep image columns as `{bytes, path}` dicts: pixels are decoded only when a batch needs them."""
    import datasets

    def undecode(feature: Any) -> Any:
        if isinstance(feature, datasets.Image):
            return datasets.Image(decode=False)
        if isinstance(feature, dict):
            return {key: undecode(value) for key, value in feature.items()}
        if dataclasses.is_dataclass(feature) and hasattr(feature, "feature"):  # List / LargeList / Sequence
            return dataclasses.replace(feature, feature=undecode(feature.feature))
        return feature

    for name, feature in data.features.items():
        changed = undecode(feature)
        if changed != feature:
            data = data.cast_column(name, changed)
    return data
