"""Scoring a predictions file: missing and duplicate items are reported, never scored silently."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from eval_fixtures import RIGHT, write_jsonl, write_tsv

from sophiavl_cli.cli.app import main
from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks import get_benchmark
from sophiavl_cli.eval.runner import score_predictions


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(["eval", *args])
    out, err = capsys.readouterr()
    return int(exited.value.code or 0), out, err


def test_an_empty_or_partial_predictions_file_exits_2_naming_what_is_missing(tmp_path: Path) -> None:
    data = write_tsv("MathVista", tmp_path / "data")
    bench = get_benchmark("MathVista")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(UserError, match=r"3 of 3 MathVista items have no prediction .*--allow-partial"):
        score_predictions(bench, empty, data=data, output_dir=tmp_path / "out")
    one = write_jsonl(tmp_path / "one.jsonl", [{"index": "2", "prediction": RIGHT["MathVista"]["2"]}])
    with pytest.raises(UserError, match=r"2 of 3 MathVista items have no prediction \(index 1, 3\)"):
        score_predictions(bench, one, data=data, output_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a refused file


def test_allow_partial_scores_what_is_there_with_the_coverage_beside_it(tmp_path: Path) -> None:
    data = write_tsv("MathVista", tmp_path / "data")
    one = write_jsonl(tmp_path / "one.jsonl", [{"index": "2", "prediction": RIGHT["MathVista"]["2"]}])
    result = score_predictions(
        get_benchmark("MathVista"), one, data=data, output_dir=tmp_path / "out", allow_partial=True
    )
    assert (result.score.score, result.answered, result.num_samples, result.partial) == (100.0, 1, 3, True)
    saved = json.loads((tmp_path / "out" / "MathVista" / "scores.json").read_text())
    assert saved["coverage"] == {"answered": 1, "of": 3, "percent": 33.33, "duplicates": 0}


def test_duplicate_indexes_are_reported_and_the_last_line_wins(tmp_path: Path) -> None:
    data = write_tsv("ChartQA", tmp_path / "data")
    rows = [{"index": i, "prediction": r} for i, r in RIGHT["ChartQA"].items()]
    preds = write_jsonl(tmp_path / "p.jsonl", [{"index": "1", "prediction": "wrong"}, *rows])
    warnings: list[str] = []
    result = score_predictions(
        get_benchmark("ChartQA"), preds, data=data, output_dir=tmp_path / "out", warn=warnings.append
    )
    assert result.score.score == 100.0 and result.duplicates == 1
    assert (
        len(warnings) == 1 and "1 indexes appear more than once" in warnings[0] and "index 1)" in warnings[0]
    )


def test_cli_exit_codes_and_the_coverage_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_tsv("MathVista", tmp_path / "data")
    one = write_jsonl(tmp_path / "one.jsonl", [{"index": "2", "prediction": RIGHT["MathVista"]["2"]}])
    args = ["--bench", "MathVista", "--predictions", str(one), "--data", str(data)]
    code, _, err = _run(capsys, *args, "--output-dir", str(tmp_path / "a"))
    assert code == 2 and "have no prediction" in err and err.strip().count("\n") == 0
    code, out, _ = _run(capsys, *args, "--output-dir", str(tmp_path / "b"), "--allow-partial")
    assert code == 0 and "MathVista: 1 of 3 items scored (33% coverage" in " ".join(out.split())
