"""Loading rows from every format, mapping columns, rejecting bad data, and resuming batches exactly."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pyarrow.parquet as pq
import pytest
from data_fixtures import png_bytes, sophiavl_row, write_png, write_registry, write_sophiavl_set

from sophiavl_cli.data.images import image_list, load_image
from sophiavl_cli.data.loader import PromptDataLoader, load_rows
from sophiavl_cli.data.registry import RELEASED_COLUMNS
from sophiavl_cli.errors import UserError

# --------------------------------------------------------------------------- formats


@pytest.fixture(autouse=True)
def _private_datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parquet files go through `datasets`, which caches arrow copies: keep them out of the user's cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def test_sophiavl_130k_rows_registered_with_the_released_mapping_become_internal_rows(tmp_path: Path) -> None:
    _, images = write_sophiavl_set(tmp_path)
    registry = write_registry(
        tmp_path / "dataset_info.json",
        {"Math": {"file_path": "json/math.json", "image_base_path": "datasets", "columns": RELEASED_COLUMNS}},
    )
    rows = load_rows("Math", registry=registry)
    assert len(rows) == 3
    first = rows[0]
    assert first["prompt"] == "How many apples are there?"
    assert first["answer"] == "<answer>3</answer>"  # tags are the reward's business
    assert first["images"] == [str(images / "Math" / "images" / "a.png")]
    assert first["problem_type"] == "numerical" and first["options"] == [] and first["data_type"] == "image"
    assert first["source"] == "Math" and first["problem_id"] == 1 and first["data_source"] == "fixture"
    assert "problem" not in first and "solution" not in first and "path" not in first
    assert rows[1]["options"] == ["A. red", "B. blue"]
    assert rows[2]["images"] == [] and rows[2]["data_type"] == "text"
    assert load_image(first["images"][0]).size == (64, 48)


def test_unregistered_json_in_the_130k_layout_gets_the_released_mapping(tmp_path: Path) -> None:
    json_path, _ = write_sophiavl_set(tmp_path)
    rows = load_rows(str(json_path), registry=tmp_path / "none.json")
    assert rows[0]["prompt"] == "How many apples are there?" and rows[0]["source"] == "math.json"
    # no image_base_path: relative images start at the file's own folder
    assert rows[0]["images"] == [str(json_path.parent / "Math" / "images" / "a.png")]


def test_jsonl_skips_blank_lines_and_reports_bad_lines_by_number(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"prompt": "q", "answer": "1", "problem_type": "numerical"})
    path.write_text(f"{good}\n\n{good}\n", encoding="utf-8")
    assert len(load_rows(str(path), registry=tmp_path / "r.json")) == 2
    path.write_text(f"{good}\n{{not json\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"rows.jsonl: line 2: not valid JSON"):
        load_rows(str(path), registry=tmp_path / "r.json")


def test_non_utf8_line_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "rows.jsonl"
    good = json.dumps({"prompt": "q", "answer": "1", "problem_type": "numerical"}).encode()
    path.write_bytes(good + b"\n" + good + b"\n" + b'{"prompt": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(UserError, match=r"rows.jsonl: line 3: not valid UTF-8"):
        load_rows(str(path), registry=tmp_path / "r.json")


def test_parquet_with_hf_image_structs_keeps_the_bytes_undecoded(tmp_path: Path) -> None:
    image_path = write_png(tmp_path / "img" / "x.png", size=(30, 20))
    table = datasets.Dataset.from_dict(
        {
            "question": ["what?", "and?"],
            "gt": ["a", "b"],
            "problem_type": ["free_form", "OCR"],
            "image": [{"bytes": png_bytes(size=(40, 10)), "path": None}, {"bytes": None, "path": "x.png"}],
        },
        features=datasets.Features(
            {
                "question": datasets.Value("string"),
                "gt": datasets.Value("string"),
                "problem_type": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )
    path = tmp_path / "set.parquet"
    pq.write_table(table.data.table, path)  # as written by datasets, without embedding the path-only image
    registry = write_registry(
        tmp_path / "dataset_info.json",
        {
            "pq": {
                "file_path": str(path),
                "image_base_path": str(image_path.parent),
                "columns": {"question": "prompt", "gt": "answer", "image": "images"},
            }
        },
    )
    rows = load_rows("pq", registry=registry)
    first, second = rows[0], rows[1]
    assert first["problem_type"] == "free-form"
    assert isinstance(first["images"][0], dict) and first["images"][0]["bytes"]
    assert load_image(first["images"][0]).size == (40, 10)
    assert second["images"][0]["path"] == str(image_path)  # a path-only dict is joined to the base
    assert load_image(second["images"][0]).size == (30, 20)


def test_parquet_folder_splits_are_chosen_with_at(tmp_path: Path) -> None:
    folder = tmp_path / "pq"
    folder.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        datasets.Dataset.from_dict(
            {
                "prompt": [f"{split}{i}" for i in range(n)],
                "answer": ["1"] * n,
                "problem_type": ["numerical"] * n,
                "images": [["a.png", "b.png"]] * n,
            }
        ).to_parquet(str(folder / f"{split}-00000-of-00001.parquet"))
    rows = load_rows(f"{folder}@test", registry=tmp_path / "r.json")
    assert [r["prompt"] for r in rows] == ["test0", "test1"]
    assert rows[0]["images"] == [str(folder / "a.png"), str(folder / "b.png")]
    assert len(load_rows(str(folder), registry=tmp_path / "r.json")) == 3
    with pytest.raises(UserError, match="split"):
        load_rows(f"{folder}@validation", registry=tmp_path / "r.json")


def test_datasets_with_different_extra_columns_concatenate_without_a_shared_schema(tmp_path: Path) -> None:
    a = tmp_path / "a.jsonl"
    b = tmp_path / "b.json"
    a.write_text(
        json.dumps({"prompt": "qa", "answer": 1, "problem_type": "numerical", "difficulty": 3}) + "\n",
        "utf-8",
    )
    b.write_text(
        json.dumps([{"prompt": "qb", "answer": "x", "problem_type": "text", "tags": ["t"]}]), "utf-8"
    )
    rows = load_rows(f"{a}, {b}", registry=tmp_path / "r.json")
    assert len(rows) == 2
    assert rows[0]["difficulty"] == 3 and "tags" not in rows[0] and rows[0]["answer"] == "1"
    assert rows[1]["tags"] == ["t"] and "difficulty" not in rows[1]
    assert [rows.origin(i).source for i in range(2)] == ["a.jsonl", "b.json"]


def test_image_list_normalises_every_column_shape() -> None:
    assert image_list(None) == [] and image_list("") == [] and image_list("a.png") == ["a.png"]
    assert image_list(["a.png", "", None, "b.png"]) == ["a.png", "b.png"]
    assert image_list({"bytes": None, "path": "c.png"}) == [{"bytes": None, "path": "c.png"}]
    assert image_list({"bytes": None, "path": None}) == []


def test_missing_and_corrupt_images_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"row 4: image .*nope.png does not exist"):
        load_image("nope.png", tmp_path, where="row 4")
    bad = tmp_path / "bad.png"
    bad.write_bytes(png_bytes()[:60])
    with pytest.raises(UserError, match=r"bad\.png"):
        load_image(str(bad))


# --------------------------------------------------------------------------- bad input


def test_unknown_problem_type_names_file_row_and_field(tmp_path: Path) -> None:
    rows = [sophiavl_row(problem_id=1), sophiavl_row(problem_id=2, problem_type="diagram")]
    json_path, _ = write_sophiavl_set(tmp_path, rows)
    with pytest.raises(UserError, match=r"math.json: row 2: field problem_type: unknown type 'diagram'"):
        load_rows(str(json_path), registry=tmp_path / "r.json")
    assert len(load_rows(str(json_path), registry=tmp_path / "r.json", extra_types=["diagram"])) == 2


def test_readme_spellings_of_types_are_normalised(tmp_path: Path) -> None:
    rows = [
        sophiavl_row(problem_id=1, problem_type="multiple_choice", options=["A. 1"]),
        sophiavl_row(problem_id=2, problem_type="free_form"),
    ]
    json_path, _ = write_sophiavl_set(tmp_path, rows)
    loaded = load_rows(str(json_path), registry=tmp_path / "r.json")
    assert [r["problem_type"] for r in loaded] == ["multiple choice", "free-form"]


def test_wrong_column_mapping_names_the_missing_column(tmp_path: Path) -> None:
    write_sophiavl_set(tmp_path)
    registry = write_registry(
        tmp_path / "dataset_info.json",
        {"Math": {"file_path": "json/math.json", "columns": {"question": "prompt", "solution": "answer"}}},
    )
    with pytest.raises(UserError, match=r"math.json: the column mapping names 'question' \(-> prompt\)"):
        load_rows("Math", registry=registry)


def test_missing_problem_type_column_can_be_defaulted_by_the_entry(tmp_path: Path) -> None:
    path = tmp_path / "geo.jsonl"
    path.write_text(json.dumps({"problem": "x?", "answer": "2"}) + "\n", "utf-8")
    entry = {"file_path": str(path), "columns": {"problem": "prompt"}}
    registry = write_registry(tmp_path / "dataset_info.json", {"geo": entry})
    with pytest.raises(UserError, match="no problem_type column"):
        load_rows("geo", registry=registry)
    write_registry(registry, {"geo": {**entry, "problem_type": "numerical"}})
    assert load_rows("geo", registry=registry)[0]["problem_type"] == "numerical"


def test_unknown_names_and_missing_files_say_what_to_do(tmp_path: Path) -> None:
    registry = write_registry(tmp_path / "dataset_info.json", {})
    with pytest.raises(UserError, match=r"not in registry .* register it"):
        load_rows("Chart", registry=registry)
    with pytest.raises(UserError, match="does not exist"):
        load_rows(str(tmp_path / "missing.json"), registry=registry)
    write_registry(registry, {"Chart": {"file_path": "data/chart.json"}})
    with pytest.raises(UserError, match=r"dataset 'Chart': file_path .*data/chart\.json does not exist"):
        load_rows("Chart", registry=registry)
    json_path, _ = write_sophiavl_set(tmp_path)
    with pytest.raises(UserError, match="one split, `train`"):
        load_rows(f"{json_path}@val", registry=registry)


def test_hub_dataset_missing_from_the_offline_cache_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="hub dataset 'nobody-sophiavl/absent' could not be loaded"):
        load_rows("nobody-sophiavl/absent", registry=tmp_path / "r.json")


def test_skip_rows_of_an_entry_are_left_out(tmp_path: Path) -> None:
    write_sophiavl_set(tmp_path)
    registry = write_registry(
        tmp_path / "dataset_info.json",
        {
            "Math": {
                "file_path": "json/math.json",
                "image_base_path": "datasets",
                "columns": RELEASED_COLUMNS,
                "skip_rows": {"train": [1]},
            }
        },
    )
    rows = load_rows("Math", registry=registry)
    assert [r["problem_id"] for r in rows] == [1, 3]
    assert rows.origin(1).row == 2


# --------------------------------------------------------------------------- batching


def _numbers(n: int) -> list[dict]:
    return [{"i": i} for i in range(n)]


def _ids(batch: list[dict]) -> list[int]:
    return [row["i"] for row in batch]


def test_each_epoch_is_a_seeded_permutation() -> None:
    loader = PromptDataLoader(_numbers(10), batch_size=3, seed=5)
    assert len(loader) == 3
    epoch0 = [i for batch in loader for i in _ids(batch)]
    epoch1 = [i for batch in loader for i in _ids(batch)]
    assert len(epoch0) == 9 and len(set(epoch0)) == 9 and epoch0 != epoch1
    again = PromptDataLoader(_numbers(10), batch_size=3, seed=5)
    assert [i for batch in again for i in _ids(batch)] == epoch0
    other = PromptDataLoader(_numbers(10), batch_size=3, seed=6)
    assert [i for batch in other for i in _ids(batch)] != epoch0


def test_state_dict_mid_epoch_resumes_exactly_across_epoch_boundaries() -> None:
    reference = PromptDataLoader(_numbers(11), batch_size=4, seed=3)
    expected = [_ids(reference.next_batch()) for _ in range(9)]
    first = PromptDataLoader(_numbers(11), batch_size=4, seed=3)
    got = [_ids(first.next_batch()) for _ in range(4)]
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    resumed = PromptDataLoader(_numbers(11), batch_size=4, seed=999)
    resumed.load_state_dict(state)
    got += [_ids(resumed.next_batch()) for _ in range(5)]
    assert got == expected
    assert state == {"epoch": 1, "position": 2, "seed": 3}


def test_iterating_after_a_resume_yields_only_the_rest_of_the_epoch() -> None:
    loader = PromptDataLoader(_numbers(8), batch_size=2, seed=1)
    everything = [_ids(b) for b in PromptDataLoader(_numbers(8), batch_size=2, seed=1)]
    loader.next_batch()
    state = loader.state_dict()
    fresh = PromptDataLoader(_numbers(8), batch_size=2, seed=1)
    fresh.load_state_dict(state)
    assert [_ids(b) for b in fresh] == everything[1:]


def test_drop_last_false_keeps_the_short_final_batch_and_no_shuffle_keeps_order() -> None:
    loader = PromptDataLoader(_numbers(5), batch_size=2, shuffle=False, drop_last=False)
    assert len(loader) == 3
    assert [_ids(b) for b in loader] == [[0, 1], [2, 3], [4]]


def test_too_few_rows_for_one_batch_is_a_user_error() -> None:
    with pytest.raises(UserError, match="fewer than one batch"):
        PromptDataLoader(_numbers(3), batch_size=4)


def test_loader_runs_over_loaded_rows() -> None:
    rows = load_rows("builtin:demo@train")
    loader = PromptDataLoader(rows, batch_size=16, seed=1)
    batch = loader.next_batch()
    assert len(loader) == 4 and len(batch) == 16 and {"prompt", "answer", "images"} <= set(batch[0])
