"""The pre-flight check finds planted faults, counts prompt tokens like the processor, and gates exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from data_fixtures import sophiavl_row, write_registry, write_sophiavl_set

from sophiavl_cli.cli.app import main
from sophiavl_cli.data.check import CheckOptions, check_tables
from sophiavl_cli.data.loader import load_tables
from sophiavl_cli.data.prompts import build_messages
from sophiavl_cli.data.registry import RELEASED_COLUMNS

LONG_QUESTION = "Describe every detail you can see here. " * 60


def _planted(root: Path) -> Path:
    """A 130k-layout set with one fault per row (row 0 and 7 are fine); returns the registry."""
    rows = [
        sophiavl_row(problem_id=1),
        sophiavl_row(problem_id=2, path="./Math/images/missing.png"),
        sophiavl_row(problem_id=3, path="./Math/images/corrupt.png"),
        sophiavl_row(problem_id=4, problem_type="diagram"),
        sophiavl_row(problem_id=5, solution="<answer></answer>"),
        sophiavl_row(problem_id=6, problem_type="multiple choice", solution="<answer>A</answer>"),
        sophiavl_row(problem_id=7, problem=LONG_QUESTION),
        sophiavl_row(
            problem_id=8,
            problem="Capital of France?",
            problem_type="text",
            solution="<answer>Paris</answer>",
            path="",
            data_type="text",
        ),
    ]
    _, images = write_sophiavl_set(root, rows)
    (images / "Math" / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    entry = {"file_path": "json/math.json", "image_base_path": "datasets", "columns": RELEASED_COLUMNS}
    return write_registry(root / "dataset_info.json", {"planted": entry})


def _faults(report) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for fault in report.faults:
        found.setdefault(fault.row, set()).add(fault.field)
    return found


def test_check_finds_each_planted_fault_in_its_row(tmp_path: Path) -> None:
    registry = _planted(tmp_path)
    report = check_tables(load_tables("planted", registry=registry, all_splits=True), CheckOptions())
    assert _faults(report) == {
        1: {"images"},
        2: {"images"},
        3: {"problem_type"},
        4: {"answer"},
        5: {"options"},
    }
    messages = {f.row: f.message for f in report.faults}
    assert "missing.png does not exist" in messages[1]
    assert "corrupt.png" in messages[2]
    assert "unknown type 'diagram'" in messages[3]
    assert {f.where for f in report.faults if f.row == 3} == {f"{tmp_path / 'json' / 'math.json'}: row 4"}
    assert report.rows[("planted", "train")]["numerical"] == 5 and report.num_rows == 8
    assert report.num_images == 3 and report.images_outside_bounds == 1  # 64x48 is below min_pixels
    assert report.max_prompt_tokens is None


def test_image_progress_is_reported_for_every_distinct_image(tmp_path: Path) -> None:
    registry = _planted(tmp_path)
    seen: list[tuple[int, int]] = []
    check_tables(
        load_tables("planted", registry=registry),
        CheckOptions(workers=2),
        on_image=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (3, 3) and [d for d, _ in seen] == [1, 2, 3]


def test_prompt_length_counts_image_tokens_as_the_processor_expands_them(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    from sophiavl_cli.data.images import load_image
    from sophiavl_cli.data.loader import load_rows
    from sophiavl_cli.models.processing import VLProcessor

    registry = _planted(tmp_path)
    processor = VLProcessor.from_pretrained(tiny_model_dir, min_pixels=3136, max_pixels=200704)
    rows = load_rows("planted", registry=registry, extra_types=["diagram"])

    def length(index: int) -> int:
        row = rows[index]
        text = processor.apply_chat_template(build_messages(row))
        return len(processor.encode(text, [load_image(ref) for ref in row["images"]]).input_ids)

    short, long = length(0), length(6)
    assert long > short
    options = CheckOptions(
        model=str(tiny_model_dir), max_prompt_length=long - 1, min_pixels=3136, max_pixels=200704
    )
    report = check_tables(load_tables("planted", registry=registry), options)
    too_long = [f for f in report.faults if f.field == "prompt"]
    assert [f.row for f in too_long] == [6]
    assert f"prompt is {long} tokens" in too_long[0].message
    assert report.max_prompt_tokens == long


def test_cli_check_exits_1_and_writes_the_bad_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = _planted(tmp_path)
    report_path = tmp_path / "bad.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "check", "planted", "--registry", str(registry), "--report", str(report_path)])
    assert exit_info.value.code == 1
    out = capsys.readouterr().out
    assert "5 bad row(s)" in out and str(report_path) in out and "rows per split" in out
    lines = [json.loads(line) for line in report_path.read_text("utf-8").splitlines()]
    assert [line["row"] for line in lines] == [1, 2, 3, 4, 5]
    assert lines[0]["faults"][0]["field"] == "images" and lines[0]["split"] == "train"


def test_cli_check_with_skip_bad_exits_0(tmp_path: Path) -> None:
    registry = _planted(tmp_path)
    report_path = tmp_path / "bad.jsonl"
    args = [
        "dataset",
        "check",
        "planted",
        "--registry",
        str(registry),
        "--report",
        str(report_path),
        "--skip-bad",
    ]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0
    assert report_path.is_file()


def test_cli_check_of_clean_data_exits_0_and_writes_no_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report_path = tmp_path / "bad.jsonl"
    with pytest.raises(SystemExit) as exit_info:
        main(["dataset", "check", "builtin:demo", "--report", str(report_path)])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "no bad rows" in out and "val" in out and not report_path.exists()
