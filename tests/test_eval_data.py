"""Benchmark data in both layouts, prediction files, and the one-line errors for bad input."""

from __future__ import annotations

import base64
import csv
import importlib.util
import json
from pathlib import Path

import pytest
from eval_fixtures import (
    BLUE,
    MAX_SCORE,
    RED,
    RIGHT,
    TSV_ROWS,
    hf_right,
    write_jsonl,
    write_parquet,
    write_tsv,
)

from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks import BENCHMARKS, get_benchmark, parse_bench_list
from sophiavl_cli.eval.data import load_samples, open_image
from sophiavl_cli.eval.runner import score_predictions
from sophiavl_cli.eval.scoring import score_items

ALL = sorted(BENCHMARKS)


def _full_marks(name: str, samples: list, responses: dict[str, str]) -> float:
    bench = get_benchmark(name)
    items = score_items(bench, samples, responses)
    return bench.aggregate(samples, items).score


@pytest.mark.parametrize("name", ALL)
def test_every_benchmark_loads_from_a_vlmevalkit_tsv_and_scores_right_answers_at_the_maximum(
    name: str, tmp_path: Path
) -> None:
    samples = load_samples(get_benchmark(name), write_tsv(name, tmp_path))
    assert samples and all(s.images for s in samples)
    assert open_image(samples[0].images[0], samples[0].origin).size == (40, 30)
    assert samples[1].images[0] == samples[0].images[0]  # row 2 refers to row 1's image by index
    responses = {s.index: RIGHT[name][s.index] for s in samples}
    assert _full_marks(name, samples, responses) == pytest.approx(MAX_SCORE.get(name, 100.0))


@pytest.mark.parametrize("name", ALL)
def test_every_benchmark_loads_from_hf_parquet_files_of_the_right_split(name: str, tmp_path: Path) -> None:
    samples = load_samples(get_benchmark(name), write_parquet(name, tmp_path / name))
    right = hf_right(name)
    assert sorted(s.index for s in samples) == sorted(right)  # the `other` split was not read
    assert all(open_image(s.images[0], s.origin).mode == "RGB" for s in samples)
    assert _full_marks(name, samples, right) == pytest.approx(MAX_SCORE.get(name, 100.0))


def test_mmmu_hf_rows_keep_every_image_column_and_interleave_markers(tmp_path: Path) -> None:
    samples = load_samples(get_benchmark("MMMU"), write_parquet("MMMU", tmp_path))
    by_index = {s.index: s for s in samples}
    assert [len(by_index["validation_Art_1"].images), len(by_index["validation_Math_1"].images)] == [1, 2]
    assert by_index["validation_Math_1"].images == (BLUE, RED)


def test_mmmu_tsv_keeps_only_rows_of_the_requested_split(tmp_path: Path) -> None:
    path = write_tsv("MMMU", tmp_path)
    assert [s.index for s in load_samples(get_benchmark("MMMU"), path)] == ["1", "2"]
    assert [s.index for s in load_samples(get_benchmark("MMMU"), path, split="dev")] == ["3"]


def test_a_data_folder_with_the_vlmevalkit_tsv_is_found_by_name(tmp_path: Path) -> None:
    write_tsv("MMStar", tmp_path)
    write_tsv("ChartQA", tmp_path)
    assert len(load_samples(get_benchmark("ChartQA"), tmp_path, limit=1)) == 1


def test_lmudata_cache_is_used_when_no_data_is_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tsv("OCRBench", tmp_path)
    monkeypatch.setenv("LMUData", str(tmp_path))
    assert len(load_samples(get_benchmark("OCRBench"), None)) == 2


# ---------------------------------------------------------------------- bad input


def test_missing_required_column_names_the_file_and_column(tmp_path: Path) -> None:
    path = tmp_path / "MME.tsv"
    path.write_text("index\timage\tquestion\tanswer\n1\t\tq\tYes\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"MME\.tsv: column 'category' is missing for MME"):
        load_samples(get_benchmark("MME"), path)


def test_an_image_that_does_not_decode_names_the_file_and_row(tmp_path: Path) -> None:
    path = write_tsv("ChartQA", tmp_path)
    text = path.read_text(encoding="utf-8").splitlines()
    garbage = base64.b64encode(b"not an image at all" * 8).decode("ascii")
    cells = text[2].split("\t")
    cells[1] = garbage
    text[2] = "\t".join(cells)
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    samples = load_samples(get_benchmark("ChartQA"), path)
    with pytest.raises(UserError, match=r"ChartQA_TEST\.tsv row 2: cannot read image raw image bytes"):
        open_image(samples[1].images[0], samples[1].origin)


def test_invalid_base64_and_dangling_image_references_are_rejected_with_the_row(tmp_path: Path) -> None:
    path = tmp_path / "OCRBench.tsv"
    long_bad = "!" * 100
    path.write_text(
        f"index\timage\tquestion\tanswer\tcategory\n1\t{long_bad}\tq\t['a']\tc\n", encoding="utf-8"
    )
    with pytest.raises(UserError, match=r"OCRBench\.tsv row 1: the image cell is not valid base64"):
        load_samples(get_benchmark("OCRBench"), path)
    path.write_text("index\timage\tquestion\tanswer\tcategory\n1\t7\tq\t['a']\tc\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"row 1: image refers to index '7'"):
        load_samples(get_benchmark("OCRBench"), path)


def test_unknown_benchmark_name_suggests_the_close_ones() -> None:
    with pytest.raises(UserError, match=r"unknown benchmark 'MMStr'; did you mean MMStar"):
        parse_bench_list("MathVista,MMStr")


def test_a_missing_split_lists_the_splits_found(tmp_path: Path) -> None:
    folder = write_parquet("ChartQA", tmp_path)
    with pytest.raises(UserError, match=r"no parquet file for split 'val' \(found other, test\)"):
        load_samples(get_benchmark("ChartQA"), folder, split="val")


def test_no_local_data_says_where_to_put_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LMUData", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(UserError, match=r"no local data for MathVista: pass --data"):
        load_samples(get_benchmark("MathVista"), None)


# ---------------------------------------------------------------------- predictions files


def test_jsonl_predictions_are_scored_against_the_data_without_a_model(tmp_path: Path) -> None:
    data = write_tsv("MMStar", tmp_path / "data")
    preds = write_jsonl(
        tmp_path / "preds.jsonl",
        [{"benchmark": "MMStar", "index": i, "prediction": r} for i, r in RIGHT["MMStar"].items()],
    )
    result = score_predictions(get_benchmark("MMStar"), preds, data=data, output_dir=tmp_path / "out")
    assert result.score.score == 100.0 and result.scoring == "official rules"
    saved = json.loads((tmp_path / "out" / "MMStar" / "scores.json").read_text())
    assert saved["breakdown"]["category"]["coarse perception"] == {"n": 1, "score": 100.0}
    assert saved["paper"] == {"SophiaVL-R1-7B": 66.7, "Qwen2.5-VL-7B-Instruct": 64.3}


def test_a_vlmevalkit_result_tsv_scores_alone_and_is_labelled_rule_based_for_judged_benchmarks(
    tmp_path: Path,
) -> None:
    path = write_tsv("MathVista", tmp_path, name="Qwen2.5-VL-7B_MathVista_MINI")
    rows = list(csv.reader(path.open(encoding="utf-8"), delimiter="\t"))
    rows[0].append("prediction")
    for row in rows[1:]:
        row.append(RIGHT["MathVista"][row[0]])
    with path.open("w", encoding="utf-8", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows(rows)
    result = score_predictions(get_benchmark("MathVista"), path, output_dir=tmp_path / "out")
    assert (result.score.score, result.scoring) == (100.0, "rule-based")
    assert "answer_type,float,1" in (tmp_path / "out" / "MathVista" / "scores.csv").read_text()


def test_a_predictions_file_for_another_benchmark_is_caught_by_field_name_or_index(tmp_path: Path) -> None:
    data = write_tsv("MME", tmp_path / "data")
    wrong_field = write_jsonl(tmp_path / "a.jsonl", [{"benchmark": "MMMU", "index": "1", "prediction": "A"}])
    with pytest.raises(UserError, match=r"a\.jsonl row 1: this prediction is for MMMU, not MME"):
        score_predictions(get_benchmark("MME"), wrong_field, data=data)
    wrong_index = write_jsonl(
        tmp_path / "b.jsonl", [{"index": "1", "prediction": "Yes"}, {"index": "99", "prediction": "No"}]
    )
    with pytest.raises(UserError, match=r"b\.jsonl row 2: index '99' is not in the MME data"):
        score_predictions(get_benchmark("MME"), wrong_index, data=data)
    named = tmp_path / "model_MMMU_DEV_VAL.tsv"
    named.write_text("index\tprediction\n1\tA\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"file name says MMMU_DEV_VAL, not MME"):
        score_predictions(get_benchmark("MME"), named, data=data)


def test_xlsx_predictions_need_openpyxl_or_say_which_extra_installs_it(tmp_path: Path) -> None:
    path = tmp_path / "model_MMStar.xlsx"
    if importlib.util.find_spec("openpyxl") is None:
        path.write_bytes(b"PK")
        with pytest.raises(UserError, match=r"needs `openpyxl`.*sophiavl\[eval\]"):
            score_predictions(get_benchmark("MMStar"), path)
        return
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    columns = ["index", "question", "answer", "A", "B", "C", "D", "category", "prediction"]
    sheet.append(columns)
    for row in TSV_ROWS["MMStar"]:
        sheet.append([row.get(c, RIGHT["MMStar"][row["index"]]) for c in columns])
    book.save(path)
    assert score_predictions(get_benchmark("MMStar"), path, output_dir=tmp_path).score.score == 100.0
