"""The dataset registry: the released `dataset_info.json` format, read and written safely.

One JSON object, one entry per dataset name (LLaMA-Factory style, as the released SophiaVL-R1 code
reads it):

    {"OCR": {"file_path": "dataset/json/ocr.json", "image_base_path": "dataset",
             "columns": {"problem": "prompt", "solution": "answer", "path": "images"}}}

Existing registries work unchanged, and keys sophiavl does not know are kept as they are. sophiavl
adds two optional keys: `problem_type` (the type of rows that have none) and `skip_rows` (rows a
check found bad and the user chose to skip, `{split: [0-based row indices]}`).

Relative `file_path` / `image_base_path` are taken relative to the registry's folder, falling
back to the working directory (where the released code resolved them).

Writes are atomic (temp file + rename) under a lock, and touch only the entry being written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_write_json

REGISTRY_ENV = "SOPHIAVL_DATASET_REGISTRY"
DEFAULT_REGISTRY = "dataset_info.json"
RELEASED_COLUMNS: dict[str, str] = {"problem": "prompt", "solution": "answer", "path": "images"}
INTERNAL_COLUMNS = ("prompt", "answer", "images")
_KNOWN_KEYS = ("file_path", "image_base_path", "columns", "problem_type", "skip_rows")


@dataclass(frozen=True)
class DatasetEntry:
    """One registered dataset. `extra` holds keys of the file that sophiavl does not interpret."""

    name: str
    file_path: str
    image_base_path: str = ""
    columns: dict[str, str] = field(default_factory=dict)
    problem_type: str | None = None
    skip_rows: dict[str, list[int]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    registry: Path | None = None  # the file it came from: anchors relative paths

    def to_json(self) -> dict[str, Any]:
        """The entry as written to `dataset_info.json` (released keys first, then ours, then unknown)."""
        out: dict[str, Any] = {
            "file_path": self.file_path,
            "image_base_path": self.image_base_path,
            "columns": dict(self.columns),
        }
        if self.problem_type is not None:
            out["problem_type"] = self.problem_type
        if self.skip_rows:
            out["skip_rows"] = {split: sorted(rows) for split, rows in self.skip_rows.items()}
        out.update(self.extra)
        return out

    def anchor(self) -> Path:
        """The folder relative paths of this entry are taken from."""
        return self.registry.parent if self.registry is not None else Path.cwd()

    def resolve_path(self, value: str) -> Path:
        """A path of this entry made absolute: registry folder first, then the working directory."""
        path = Path(value).expanduser()
        if path.is_absolute():
            return path
        beside_registry = self.anchor() / path
        if beside_registry.exists():
            return beside_registry
        from_cwd = Path.cwd() / path
        return from_cwd if from_cwd.exists() else beside_registry

    def image_base(self) -> Path | None:
        """Where relative image paths start; None means the data file's own folder."""
        return self.resolve_path(self.image_base_path) if self.image_base_path else None


def registry_path(option: str | Path | None = None) -> Path:
    """The registry file: the option, else $SOPHIAVL_DATASET_REGISTRY, else ./dataset_info.json."""
    if option:
        return Path(option).expanduser()
    env = os.environ.get(REGISTRY_ENV)
    return Path(env).expanduser() if env else Path(DEFAULT_REGISTRY)


def read_registry(path: Path) -> dict[str, dict[str, Any]]:
    """The raw registry (a missing file is an empty registry); a corrupt one is a `UserError`."""
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise UserError(
            f"dataset registry {path} is not UTF-8 text ({exc.reason}); fix or remove it"
        ) from exc
    except json.JSONDecodeError as exc:
        raise UserError(
            f"dataset registry {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix or remove it"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"dataset registry {path} must hold a JSON object of name -> entry; fix or remove it")
    for name, raw in data.items():
        if not isinstance(raw, dict):
            raise UserError(f"dataset registry {path}: entry {name!r} must be a JSON object; fix it")
    return data


def parse_entry(name: str, raw: Mapping[str, Any], registry: Path | None = None) -> DatasetEntry:
    """Validate one raw entry; errors name the registry, the entry and the field."""
    where = f"dataset registry {registry}: entry {name!r}" if registry else f"dataset {name!r}"
    file_path = raw.get("file_path")
    if not isinstance(file_path, str) or not file_path:
        raise UserError(f"{where}: field file_path is missing or empty; set it to a file, folder or hub id")
    base = raw.get("image_base_path") or ""
    if not isinstance(base, str):
        raise UserError(f"{where}: field image_base_path must be a string path")
    columns = raw.get("columns") or {}
    if not isinstance(columns, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in columns.items()
    ):
        raise UserError(f"{where}: field columns must map source column names to internal names")
    problem_type = raw.get("problem_type")
    if problem_type is not None and not isinstance(problem_type, str):
        raise UserError(f"{where}: field problem_type must be a string")
    skip_rows = raw.get("skip_rows") or {}
    if not isinstance(skip_rows, dict) or not all(
        isinstance(rows, list) and all(isinstance(i, int) for i in rows) for rows in skip_rows.values()
    ):
        raise UserError(f"{where}: field skip_rows must map split names to lists of row indices")
    extra = {key: value for key, value in raw.items() if key not in _KNOWN_KEYS}
    return DatasetEntry(
        name=name,
        file_path=file_path,
        image_base_path=base,
        columns=dict(columns),
        problem_type=problem_type,
        skip_rows={str(split): list(rows) for split, rows in skip_rows.items()},
        extra=extra,
        registry=Path(registry) if registry else None,
    )


def list_entries(path: Path) -> list[DatasetEntry]:
    """Every entry of a registry, in file order."""
    return [parse_entry(name, raw, path) for name, raw in read_registry(path).items()]


def get_entry(name: str, path: Path) -> DatasetEntry:
    """One entry by name; an unknown name is a `UserError` listing the known ones."""
    data = read_registry(path)
    if name not in data:
        known = ", ".join(sorted(data)) or "none"
        raise UserError(
            f"dataset {name!r} is not in registry {path} (registered: {known}); "
            "add it with `sophiavl register-dataset`"
        )
    return parse_entry(name, data[name], path)


def parse_columns(pairs: list[str]) -> dict[str, str]:
    """`--column SRC=DST` options as a mapping (source column name -> internal column name)."""
    columns: dict[str, str] = {}
    for pair in pairs:
        src, sep, dst = pair.partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise UserError(f"--column {pair!r}: expected SRC=DST, e.g. --column problem=prompt")
        if src in columns:
            raise UserError(f"--column: source column {src!r} is mapped twice; keep one mapping")
        columns[src] = dst
    return columns


def _lock_for(path: Path) -> Any:
    """A lock kept under sophiavl's home, so no stray lock file lands beside the user's registry."""
    from filelock import FileLock

    from sophiavl_cli.paths import sophiavl_home

    digest = hashlib.sha256(os.fspath(Path(path).resolve()).encode()).hexdigest()[:16]
    lock_dir = sophiavl_home() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    return FileLock(os.fspath(lock_dir / f"registry-{digest}.lock"))


def write_entry(entry: DatasetEntry, path: Path, *, force: bool = False) -> None:
    """Add (or with `force` replace) one entry; every other entry is written back untouched."""
    path = Path(path)
    with _lock_for(path):
        data = read_registry(path)
        if entry.name in data and not force:
            raise UserError(
                f"dataset {entry.name!r} is already in registry {path}; pass --force to replace it"
            )
        data[entry.name] = entry.to_json()
        atomic_write_json(path, data, indent=4)


def remove_entry(name: str, path: Path) -> None:
    """Delete one entry (atomically; the others stay as they were)."""
    path = Path(path)
    with _lock_for(path):
        data = read_registry(path)
        if name not in data:
            raise UserError(f"dataset {name!r} is not in registry {path}; nothing to remove")
        del data[name]
        atomic_write_json(path, data, indent=4)
