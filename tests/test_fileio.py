"""The one file-I/O module: atomic writes keep the old file on failure, JSON lines survive a kill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sophiavl_cli import fileio
from sophiavl_cli.errors import UserError


def test_atomic_write_replaces_the_file_and_leaves_no_temp_behind(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "report.json"
    fileio.atomic_write_json(path, {"name": "é", "n": 1})
    fileio.atomic_write_json(path, {"name": "ü", "n": 2})
    assert json.loads(path.read_text("utf-8")) == {"name": "ü", "n": 2}
    assert "ü" in path.read_text("utf-8")  # non-ASCII kept as is
    assert os.listdir(path.parent) == ["report.json"]


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "state.json"
    path.write_text('{"old": true}\n', "utf-8")

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        fileio.atomic_write_text(path, '{"new": true}\n')
    assert path.read_text("utf-8") == '{"old": true}\n'
    assert os.listdir(tmp_path) == ["state.json"]


def test_a_writer_that_raises_inside_atomic_path_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), fileio.atomic_path(path) as tmp:
        assert tmp.parent == tmp_path and tmp.suffix == ".png"  # same folder, same format suffix
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["plot.png"]


def test_atomic_write_keeps_the_file_mode(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    path.write_text("{}", "utf-8")
    path.chmod(0o640)
    fileio.atomic_write_text(path, '{"a": 1}')
    assert path.stat().st_mode & 0o777 == 0o640 and path.read_text("utf-8") == '{"a": 1}'


def test_read_jsonl_skips_only_a_cut_off_last_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n\n{"step": 2}\n{"step": 3, "loss": 0.', "utf-8")
    assert fileio.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_read_jsonl_keeps_a_complete_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}', "utf-8")
    assert fileio.read_jsonl(path) == [{"step": 1}, {"step": 2}]


def test_a_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    path.write_text('{"step": 1}\n{"step": 2, oops}\n{"step": 3}\n', "utf-8")
    with pytest.raises(UserError, match=r"cache\.jsonl line 2: not a JSON record"):
        fileio.read_jsonl(path)


def test_a_corrupt_last_line_with_its_newline_is_an_error_too(tmp_path: Path) -> None:
    path = tmp_path / "cache.jsonl"
    path.write_text('{"step": 1}\nnot json\n', "utf-8")
    with pytest.raises(UserError, match="line 2"):
        fileio.read_jsonl(path)


def test_a_missing_file_reads_as_empty_only_when_allowed(tmp_path: Path) -> None:
    assert fileio.read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(UserError, match=r"none\.jsonl"):
        fileio.read_jsonl(tmp_path / "none.jsonl")


def test_the_appender_cuts_a_torn_line_then_appends_readable_records(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"key": "a"}\n{"key": "b", "ans', "utf-8")
    with fileio.JsonlAppender(path, durable=True) as out:
        out.write({"key": "c"})
        out.write({"key": "d", "text": "ß"}, {"key": "e"})
    assert [r["key"] for r in fileio.read_jsonl(path)] == ["a", "c", "d", "e"]


def test_atomic_write_jsonl_round_trips(tmp_path: Path) -> None:
    records = [{"i": i, "text": f"line {i}\nwith a newline"} for i in range(3)]
    fileio.atomic_write_jsonl(tmp_path / "dump.jsonl", records)
    assert fileio.read_jsonl(tmp_path / "dump.jsonl") == records
