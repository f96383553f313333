"""The dataset registry: released format, register/list/show/remove, --force, atomic writes, the check gate."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from data_fixtures import sophiavl_row, write_registry, write_sophiavl_set

from sophiavl_cli import fileio
from sophiavl_cli.cli.app import main
from sophiavl_cli.data.loader import load_rows
from sophiavl_cli.data.registry import (
    RELEASED_COLUMNS,
    DatasetEntry,
    get_entry,
    parse_columns,
    read_registry,
    registry_path,
    write_entry,
)
from sophiavl_cli.errors import UserError

# An entry as the released repository wrote it, plus a key sophiavl does not know.
RELEASED_ENTRY = {
    "file_path": "dataset/json/ocr.json",
    "image_base_path": "datasets",
    "columns": {"problem": "prompt", "solution": "answer", "path": "images"},
    "comment": "kept as is",
}


def run(*args: str) -> int:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    return int(exit_info.value.code or 0)


def test_register_writes_the_released_format_and_keeps_other_entries_untouched(tmp_path: Path) -> None:
    json_path, images = write_sophiavl_set(tmp_path)
    registry = write_registry(tmp_path / "dataset_info.json", {"OCR": RELEASED_ENTRY})
    code = run(
        "register-dataset",
        "Math",
        "--file-path",
        str(json_path),
        "--image-base-path",
        str(images),
        "--registry",
        str(registry),
    )
    assert code == 0
    data = json.loads(registry.read_text("utf-8"))
    assert list(data) == ["OCR", "Math"]
    assert data["OCR"] == RELEASED_ENTRY
    assert data["Math"] == {
        "file_path": str(json_path),
        "image_base_path": str(images),
        "columns": RELEASED_COLUMNS,
    }
    assert len(load_rows("Math", registry=registry)) == 3


def test_list_and_show_print_the_entries(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    registry = write_registry(tmp_path / "dataset_info.json", {"OCR": RELEASED_ENTRY})
    assert run("dataset", "list", "--registry", str(registry), "--json") == 0
    assert json.loads(capsys.readouterr().out) == {"OCR": RELEASED_ENTRY}
    assert run("dataset", "show", "OCR", "--registry", str(registry)) == 0
    out = capsys.readouterr().out
    assert "dataset/json/ocr.json" in out and "kept as is" in out and "MISSING" in out
    assert run("dataset", "show", "Nope", "--registry", str(registry)) == 2
    assert "'Nope' is not in registry" in capsys.readouterr().err


def test_re_registering_a_name_needs_force(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    json_path, images = write_sophiavl_set(tmp_path)
    registry = write_registry(tmp_path / "dataset_info.json", {"Math": RELEASED_ENTRY})
    args = [
        "register-dataset",
        "Math",
        "--file-path",
        str(json_path),
        "--image-base-path",
        str(images),
        "--registry",
        str(registry),
    ]
    assert run(*args) == 2
    assert "pass --force" in capsys.readouterr().err
    assert read_registry(registry)["Math"] == RELEASED_ENTRY
    assert run(*args, "--force", "--no-check") == 0
    assert read_registry(registry)["Math"]["file_path"] == str(json_path)


def test_a_failed_write_leaves_the_registry_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = write_registry(tmp_path / "dataset_info.json", {"OCR": RELEASED_ENTRY})
    before = registry.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_entry(DatasetEntry(name="new", file_path="x.json"), registry)
    assert registry.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["dataset_info.json"]  # no temp file left behind


def test_corrupt_registry_is_a_user_error_naming_the_file_and_line(tmp_path: Path) -> None:
    registry = tmp_path / "dataset_info.json"
    registry.write_text('{\n  "a": {"file_path": "x"},\n  oops\n}', "utf-8")
    with pytest.raises(UserError, match=r"dataset_info.json is not valid JSON \(line 3"):
        read_registry(registry)
    with pytest.raises(UserError, match=r"dataset_info\.json"):
        write_entry(DatasetEntry(name="b", file_path="y"), registry)
    registry.write_text('{"a": {"image_base_path": "x"}}', "utf-8")
    with pytest.raises(UserError, match="entry 'a': field file_path is missing"):
        get_entry("a", registry)


def test_registry_path_prefers_option_then_env_then_cwd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SOPHIAVL_DATASET_REGISTRY", str(tmp_path / "env.json"))
    assert registry_path(tmp_path / "opt.json") == tmp_path / "opt.json"
    assert registry_path(None) == tmp_path / "env.json"
    monkeypatch.delenv("SOPHIAVL_DATASET_REGISTRY")
    assert registry_path(None) == Path("dataset_info.json")


def test_relative_paths_resolve_beside_the_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_sophiavl_set(tmp_path)
    registry = write_registry(
        tmp_path / "dataset_info.json",
        {"Math": {"file_path": "json/math.json", "image_base_path": "datasets", "columns": RELEASED_COLUMNS}},
    )
    monkeypatch.chdir(tmp_path.parent)
    rows = load_rows("Math", registry=registry)
    assert rows[0]["images"] == [str(tmp_path / "datasets" / "Math" / "images" / "a.png")]


def test_column_options_parse_and_reject_malformed_pairs() -> None:
    assert parse_columns(["question=prompt", " gt = answer "]) == {"question": "prompt", "gt": "answer"}
    with pytest.raises(UserError, match="expected SRC=DST"):
        parse_columns(["question"])
    with pytest.raises(UserError, match="mapped twice"):
        parse_columns(["a=prompt", "a=answer"])


def test_register_with_bad_rows_is_refused_unless_skip_bad(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [
        sophiavl_row(problem_id=1),
        sophiavl_row(problem_id=2, solution="<answer> </answer>"),
        sophiavl_row(problem_id=3),
    ]
    json_path, images = write_sophiavl_set(tmp_path, rows)
    registry = tmp_path / "dataset_info.json"
    report = tmp_path / "report.jsonl"
    args = [
        "register-dataset",
        "Math",
        "--file-path",
        str(json_path),
        "--image-base-path",
        str(images),
        "--registry",
        str(registry),
        "--report",
        str(report),
    ]
    assert run(*args) == 1
    assert "not registered" in capsys.readouterr().out and not registry.exists()
    assert json.loads(report.read_text("utf-8"))["row"] == 1
    assert run(*args, "--skip-bad") == 0
    assert read_registry(registry)["Math"]["skip_rows"] == {"train": [1]}
    assert [r["problem_id"] for r in load_rows("Math", registry=registry)] == [1, 3]


def test_register_with_a_wrong_mapping_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    json_path, _ = write_sophiavl_set(tmp_path)
    registry = tmp_path / "dataset_info.json"
    code = run(
        "register-dataset",
        "Math",
        "--file-path",
        str(json_path),
        "--column",
        "question=prompt",
        "--column",
        "solution=answer",
        "--registry",
        str(registry),
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "math.json: the column mapping names 'question'" in err and not registry.exists()


def test_remove_deletes_only_that_entry(tmp_path: Path) -> None:
    registry = write_registry(
        tmp_path / "dataset_info.json", {"OCR": RELEASED_ENTRY, "Chart": RELEASED_ENTRY}
    )
    assert run("dataset", "remove", "Chart", "--registry", str(registry)) == 0
    assert read_registry(registry) == {"OCR": RELEASED_ENTRY}
