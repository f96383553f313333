"""File I/O done one way: atomic writes, appended JSON lines, and reading them back after a kill.

Atomic writes go to a temp file in the target's folder, are fsynced, renamed over the target with
`os.replace` and the folder is fsynced: a reader sees the old file or the new one, never a mix, and
a process killed (or a disk that fills up) mid-write leaves the old file as it was.

Every JSON this package writes (files, JSON lines, `--json` output) goes through `json_text`, where
NaN and infinities, which JSON cannot hold (Python would write a bare `NaN` that other readers
reject), become `null`: a statistic that is undefined is written as "no value".

JSON-lines files are appended one record per line and flushed. A kill can cut only the last line
(it has no newline yet): `read_jsonl` skips exactly that line, and `JsonlAppender` cuts it off
before appending. Any other line that is not JSON is damage nobody should paper over, so it is a
`UserError` naming the file and the line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from sophiavl_cli.errors import UserError

__all__ = [
    "JsonlAppender",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_write_text",
    "cut_partial_line",
    "fsync_dir",
    "fsync_tree",
    "is_disk_full",
    "json_text",
    "jsonl_line",
    "read_jsonl",
]


# --------------------------------------------------------------------------- a full disk

_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """An OSError saying the disk (or the user's quota) has no room left."""
    return isinstance(exc, OSError) and exc.errno in _NO_SPACE


# --------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: Path | str) -> Iterator[Path]:
    """Yield a temp path beside `path` to write by any means (torch.save, savefig); on success it
    replaces `path` durably, on an exception it is removed and `path` is untouched.

    The temp name keeps the suffix (`.name.XXXX.tmp.png`), for writers that pick a format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        _fsync_file(tmp)
        os.chmod(tmp, _mode_for(path))  # mkstemp makes 0600; keep what the file had
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> None:
    """Replace `path` with `data` in one step (the parent folder is created if needed)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)


def atomic_write_text(path: Path | str, text: str) -> None:
    """UTF-8 text version of `atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, data: Any, *, indent: int | None = 2) -> None:
    """`data` as one JSON document (UTF-8, non-ASCII kept, NaN as null) with a final newline."""
    atomic_write_text(path, json_text(data, indent=indent) + "\n")


def atomic_write_jsonl(path: Path | str, records: Iterable[Any]) -> None:
    """`records` as JSON lines, replacing the file in one step."""
    atomic_write_text(path, "".join(jsonl_line(record) for record in records))


def jsonl_line(record: Any) -> str:
    """One record as a JSON line (non-ASCII kept, NaN as null; other values JSON cannot hold as str)."""
    return json_text(record, default=str) + "\n"


def json_text(data: Any, *, indent: int | None = None, default: Any = None) -> str:
    """`data` as JSON text that every reader accepts: NaN and +-inf (at any depth) become null.

    `default` is json's hook for objects it cannot encode (None: such an object is a TypeError).
    """
    try:
        return json.dumps(data, indent=indent, ensure_ascii=False, allow_nan=False, default=default)
    except ValueError:  # a non-finite float somewhere: the rare case pays for the walk
        return json.dumps(_finite(data), indent=indent, ensure_ascii=False, allow_nan=False, default=default)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


def fsync_dir(path: Path | str) -> None:
    """Make renames in `path` durable; some file systems refuse a folder fsync, which is harmless."""
    with contextlib.suppress(OSError):
        _fsync_file(Path(path))


def fsync_tree(root: Path | str) -> None:
    """Flush every file and folder below `root` to disk, before a temp folder is renamed into place."""
    for folder, _, files in os.walk(root):
        for name in files:
            _fsync_file(Path(folder) / name)
        fsync_dir(folder)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_for(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


# --------------------------------------------------------------------------- JSON lines


def read_jsonl(path: Path | str, *, missing_ok: bool = False) -> list[Any]:
    """Every record of a JSON-lines file; blank lines and a last line cut off by a kill are skipped.

    The cut-off line is the last one when it has no newline and is not JSON. A bad line anywhere
    else is a `UserError` naming the file and line. `missing_ok`: a missing file reads as empty.
    """
    path = Path(path)
    if missing_ok and not path.is_file():
        return []
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    lines = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            records.append(json.loads(raw.decode("utf-8")))
        except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
            if number == len(lines):  # no newline after it: a write cut short
                break
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
            raise UserError(
                f"{path} line {number}: not a JSON record ({reason}); "
                "fix or delete that line (each line must be one JSON value)"
            ) from exc
    return records


def cut_partial_line(path: Path | str) -> int:
    """Drop a last line without its newline (a write cut short); returns the bytes removed."""
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        handle.seek(size - 1)
        if handle.read(1) == b"\n":
            return 0  # complete: only the last byte was read
        handle.seek(0)
        keep = handle.read().rfind(b"\n") + 1
        handle.truncate(keep)
        return size - keep


class JsonlAppender:
    """Appends records to a JSON-lines file, one line each, flushed per `write`.

    A line cut short by an earlier kill is removed first so the new records start on a line of
    their own. `durable=True` also fsyncs each `write` (for answers that are expensive to redo).
    """

    def __init__(self, path: Path | str, *, durable: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        cut_partial_line(self.path)
        self.durable = durable
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, *records: Any) -> None:
        """Append `records` and flush them (fsync too when durable)."""
        self._handle.write("".join(jsonl_line(record) for record in records))
        self._handle.flush()
        if self.durable:
            os.fsync(self._handle.fileno())

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
