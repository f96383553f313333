"""`sophiavl download --register`: put a downloaded data set's parts into the dataset registry.

The SophiaVL-R1-130k release is one json file per category (`Chart.json`, `OCR.json`, `Math.json`,
`Knowledge.json`, `General.json`, possibly under a sub-folder) plus image folders, rows in the
layout of method.md §4 (`problem`, `solution` with `<answer>` tags, `path` relative to the data
set's root). Each json file becomes one registry entry, `sophiavl-130k-<category lower>`, with the
released column mapping (`problem`->`prompt`, `solution`->`answer`, `path`->`images`) and an
absolute `image_base_path`: the folder the rows' image paths exist under, found by trying the
json's own folder and its parents up to the download root. Absolute paths keep the registry
valid from any working directory.

Other data sets in the same row layout register the same way, named `<repo name>-<file stem>`.
Re-running is harmless: an entry identical to the one on disk is left alone; a different one
under the same name is refused rather than overwritten.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sophiavl_cli.data.registry import RELEASED_COLUMNS, DatasetEntry, parse_entry, read_registry, write_entry
from sophiavl_cli.errors import UserError

# repo id -> registry name prefix, for releases whose names users already know
RELEASE_PREFIXES: dict[str, str] = {"bunny127/SophiaVL-R1-130k": "sophiavl-130k"}
PART_SUFFIXES = (".json", ".jsonl")
_SKIP_FILES = {"dataset_info.json"}


@dataclass(frozen=True)
class RegisteredPart:
    """One data file written to (or found already in) the registry."""

    entry: DatasetEntry
    status: Literal["added", "unchanged"]
    num_rows: int


def registry_prefix(repo_id: str) -> str:
    """`sophiavl-130k` for the 130k release, else the repo's name in lower case (`demo` for builtin:demo)."""
    if repo_id in RELEASE_PREFIXES:
        return RELEASE_PREFIXES[repo_id]
    return repo_id.rsplit("/", 1)[-1].lower()


def find_parts(root: Path) -> list[Path]:
    """The json/jsonl files under `root` whose rows are in the released layout (have a `problem`)."""
    parts = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(p.startswith(".") for p in rel.parts) or path.name in _SKIP_FILES:
            continue
        if path.suffix in PART_SUFFIXES and path.is_file() and _first_row(path).get("problem") is not None:
            parts.append(path)
    return parts


def image_base_for(data_file: Path, root: Path, rows: list[dict[str, Any]]) -> Path:
    """The folder the rows' relative image paths exist under.

    Tried in order: the file's folder, its parents up to `root`, then `root`'s sub-folders (a
    release may keep `json/` and `images/` or `datasets/` side by side).

    Decided from the first rows that carry a path (released rows: `path` is a relative file path);
    when none of the candidates holds the image, the root is used and the check reports the misses.
    """
    samples = [
        p for p in (_first_path(row.get("path")) for row in rows[:20]) if p and not Path(p).is_absolute()
    ]
    ancestors = [p for p in data_file.parent.parents if p == root or root in p.parents]
    subfolders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    candidates = [data_file.parent, *ancestors, *subfolders]
    for candidate in candidates:
        if samples and all((candidate / s).exists() for s in samples[:3]):
            return candidate
    return root


def register_parts(root: Path, repo_id: str, registry: Path) -> list[RegisteredPart]:
    """Register every part of the data set downloaded to `root`; returns them in file order."""
    root = root.resolve()
    parts = find_parts(root)
    if not parts:
        raise UserError(
            f"--register: no json/jsonl file with `problem` rows under {root}; register its files with "
            "`sophiavl register-dataset NAME --file-path FILE --column SRC=DST`"
        )
    prefix = registry_prefix(repo_id)
    existing = read_registry(registry)
    planned: list[tuple[DatasetEntry, int]] = []
    for part in parts:
        rows = _rows(part)
        name = f"{prefix}-{part.stem.lower()}"
        raw = {
            "file_path": str(part),
            "image_base_path": str(image_base_for(part, root, rows)),
            "columns": dict(RELEASED_COLUMNS),
        }
        entry = parse_entry(name, raw, registry)
        if name in existing and parse_entry(name, existing[name], registry).to_json() != entry.to_json():
            raise UserError(
                f"--register: dataset {name!r} is already in registry {registry} with other paths; remove it "
                "first or pass --registry with another file"
            )
        planned.append((entry, len(rows)))
    out = []
    for entry, num_rows in planned:  # every name checked before the first write
        if entry.name in existing:
            out.append(RegisteredPart(entry, "unchanged", num_rows))
        else:
            write_entry(entry, registry)
            out.append(RegisteredPart(entry, "added", num_rows))
    return out


def _rows(path: Path) -> list[dict[str, Any]]:
    from sophiavl_cli.data.sources import read_json_rows

    rows, _lines = read_json_rows(path)
    return rows


def _first_row(path: Path) -> dict[str, Any]:
    """The first row of a json (list of objects) or jsonl file; {} when it is not row data."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as handle:
                line = next((ln for ln in handle if ln.strip()), "")
            first = json.loads(line) if line else {}
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            first = data[0] if isinstance(data, list) and data else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return first if isinstance(first, dict) else {}


def _first_path(value: Any) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None
