"""builtin:demo: deterministic, in the SophiaVL-R1-130k layout, every question type, loadable by name."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from PIL import Image

from sophiavl_cli.data.demo import DEMO_VERSION, SPLIT_SIZES, build_demo, resolve_demo
from sophiavl_cli.data.loader import load_rows

ROW_KEYS = [
    "problem_id",
    "problem",
    "data_type",
    "problem_type",
    "options",
    "process",
    "solution",
    "path",
    "data_source",
]


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_demo(tmp_path_factory.mktemp("demo") / "out")


def test_two_builds_are_byte_identical(demo: Path, tmp_path: Path) -> None:
    again = build_demo(tmp_path / "again")
    assert _files(demo) == _files(again)
    assert len(_files(demo)) == 3 + sum(1 for p in (demo / "images").iterdir())


def test_rows_have_the_sophiavl_130k_layout(demo: Path) -> None:
    for split, size in SPLIT_SIZES.items():
        rows = json.loads((demo / f"{split}.json").read_text("utf-8"))
        assert len(rows) == size
        for row in rows:
            assert list(row) == ROW_KEYS
            assert isinstance(row["problem_id"], int) and isinstance(row["options"], list)
            assert re.fullmatch(r"<answer>.+</answer>", row["solution"])
            if row["data_type"] == "image":
                assert (demo / row["path"]).is_file()
            else:
                assert row["data_type"] == "text" and row["path"] == ""
    ids = [r["problem_id"] for s in SPLIT_SIZES for r in json.loads((demo / f"{s}.json").read_text("utf-8"))]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("split", list(SPLIT_SIZES))
def test_every_question_type_and_text_only_rows_appear_in_each_split(demo: Path, split: str) -> None:
    rows = json.loads((demo / f"{split}.json").read_text("utf-8"))
    assert {r["problem_type"] for r in rows} == {"numerical", "multiple choice", "OCR", "free-form", "text"}
    assert any(r["data_type"] == "text" for r in rows) and any(r["data_type"] == "image" for r in rows)
    assert any(r["problem"].startswith("Subtract all") for r in rows)


def test_multiple_choice_solutions_name_one_of_the_options(demo: Path) -> None:
    rows = [
        r
        for r in json.loads((demo / "train.json").read_text("utf-8"))
        if r["problem_type"] == "multiple choice"
    ]
    assert rows
    for row in rows:
        letter = re.fullmatch(r"<answer>([A-D])</answer>", row["solution"]).group(1)
        assert [o[0] for o in row["options"]] == ["A", "B", "C", "D"]
        assert row["options"][ord(letter) - ord("A")].split(". ")[1] in row["process"]


def test_images_are_small_rgb_pngs_and_ocr_words_are_drawn(demo: Path) -> None:
    for path in (demo / "images").iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert 112 <= image.width <= 224 and 112 <= image.height <= 224
    rows = json.loads((demo / "train.json").read_text("utf-8"))
    ocr = next(r for r in rows if r["problem_type"] == "OCR")
    with Image.open(demo / ocr["path"]) as image:
        assert image.convert("L").getextrema()[0] == 0  # black text on white


def test_registry_uses_the_released_column_mapping(demo: Path) -> None:
    registry = json.loads((demo / "dataset_info.json").read_text("utf-8"))
    for split in SPLIT_SIZES:
        assert registry[f"demo_{split}"]["columns"] == {
            "problem": "prompt",
            "solution": "answer",
            "path": "images",
        }
        assert registry[f"demo_{split}"]["file_path"] == f"{split}.json"


def test_resolve_demo_builds_once_under_sophiavl_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPHIAVL_HOME", str(tmp_path))
    first = resolve_demo()
    assert first == tmp_path / "builtin" / f"demo-{DEMO_VERSION}"
    stamp = (first / "train.json").stat().st_mtime_ns
    assert resolve_demo() == first and (first / "train.json").stat().st_mtime_ns == stamp
    leftovers = [p.name for p in first.parent.iterdir() if p.name.startswith(".demo") and p.is_dir()]
    assert leftovers == []


def test_builtin_demo_loads_by_name_with_internal_columns() -> None:
    rows = load_rows("builtin:demo@val")
    assert len(rows) == SPLIT_SIZES["val"]
    row = rows[0]
    assert row["source"] == "builtin:demo"
    assert row["answer"].startswith("<answer>") and row["prompt"]
    assert all(Path(p).is_absolute() and Path(p).is_file() for r in rows for p in r["images"])
    assert len(load_rows("builtin:demo")) == SPLIT_SIZES["train"]  # no split means train
