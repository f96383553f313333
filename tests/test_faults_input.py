"""Bad input said in one line naming the file (and row or line), before anything heavy starts:
decompression-bomb images wherever images are opened, empty data files, `sophiavl infer --input`
files validated whole before the model loads.

The faults are real files: a 20000 x 20000 one-bit PNG of about 50 KB whose pixels PIL refuses to
decode, a PNG cut in half, an empty JSON file.
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from typing import Any

import pytest
from cli_fixtures import run_cli
from PIL import Image

from sophiavl_cli.data.images import load_image, open_image
from sophiavl_cli.data.loader import load_rows
from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.data import open_image as open_eval_image
from sophiavl_cli.rewards.rm_request import ThinkingSample, image_to_data_url
from sophiavl_cli.rewards.thinking import ThinkingRewardClient

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
TINY = "builtin:tiny-qwen2.5-vl"
SIDE = 20000


def bomb_png(path: Path) -> Path:
    """A real one-bit greyscale PNG of SIDE x SIDE white pixels: ~50 KB on disk, 400 M pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\xff" * (SIDE // 8)  # filter byte + SIDE one-bit pixels
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * SIDE, 9))
        + chunk(b"IEND", b"")
    )
    return path


def small_png(path: Path, color: str = "red") -> Path:
    Image.new("RGB", (40, 30), color).save(path)
    return path


def truncated_png(path: Path) -> Path:
    """A PNG whose header reads but whose pixel data stops half-way (a copy cut short)."""
    noise = Image.effect_noise((64, 64), 60).convert("RGB")
    noise.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _error_lines(capsys_text: str) -> int:
    return capsys_text.count("error:")


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = bomb_png(tmp_path_factory.mktemp("bomb") / "bomb.png")
    assert path.stat().st_size < 100_000
    return path


# --------------------------------------------------------------------------- 8. decompression bombs


def test_the_bomb_is_a_real_png_that_pil_refuses_to_decode(bomb: Path) -> None:
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)


def test_every_image_opener_names_the_bomb_file_and_where_it_was_found(bomb: Path) -> None:
    for opener in (open_image, load_image):
        with pytest.raises(UserError, match=rf"^data\.json: row 3: image {bomb} is too large to decode"):
            opener(str(bomb), where="data.json: row 3")
    with pytest.raises(UserError, match=r"^MathVista\.tsv row 9: image raw image bytes is too large"):
        open_eval_image(bomb.read_bytes(), "MathVista.tsv row 9")
    with pytest.raises(UserError, match="too large to decode"):
        image_to_data_url(str(bomb))


def test_the_reward_client_fails_only_the_sample_with_the_bomb(bomb: Path) -> None:
    """No request leaves for it (the URL is closed: a request would fail as `connection`)."""
    client = ThinkingRewardClient("http://127.0.0.1:9/v1", "m", api_key="k", timeout=1.0, max_retries=0)
    try:
        (result,) = client.score_many_sync([ThinkingSample("q", "<answer>1</answer>", (str(bomb),))])
    finally:
        client.close()
    assert result.score is None and result.failure == "bad_image" and result.attempts == 0


def test_infer_image_bomb_is_one_line_before_the_model_loads(bomb: Path, tmp_path, capsys) -> None:
    """The model folder does not exist: an error about the image proves it was checked first."""
    code, out = run_cli(
        capsys, "infer", "--model", str(tmp_path / "no-model"), "--image", str(bomb), "--type", "numerical"
    )
    assert code == 2, out
    assert f"image {bomb} is too large to decode safely" in out and "no-model" not in out
    assert "Traceback" not in out and _error_lines(out) == 1


def test_infer_input_names_the_line_of_a_bomb_before_the_model_loads(bomb: Path, tmp_path, capsys) -> None:
    good = small_png(tmp_path / "ok.png")
    rows = [{"images": [str(good)], "prompt": f"q{i}", "type": "numerical"} for i in range(4)]
    rows[2]["images"] = [str(bomb)]
    requests = _write_requests(tmp_path / "requests.jsonl", rows)
    code, out = run_cli(capsys, "infer", "--model", str(tmp_path / "no-model"), "--input", str(requests),
                     "--output", str(tmp_path / "answers.jsonl"))  # fmt: skip
    assert code == 2, out
    assert f"{requests} line 3: image {bomb} is too large to decode safely" in out
    assert not (tmp_path / "answers.jsonl").exists()


def test_training_data_with_a_bomb_names_the_file_and_row_before_ray(bomb: Path, tmp_path, capsys) -> None:
    good = small_png(tmp_path / "ok.png")
    rows = [
        {
            "problem": f"How many? {i}",
            "solution": "<answer>1</answer>",
            "path": str(good),
            "problem_type": "numerical",
        }
        for i in range(6)
    ]
    rows[2]["path"] = str(bomb)
    data = tmp_path / "train.json"
    data.write_text(json.dumps(rows), encoding="utf-8")
    code, out = run_cli(
        capsys, "train", str(QUICKSTART), f"data.train_files={data}", f"trainer.output_dir={tmp_path}"
    )
    assert code == 2, out
    assert f"{data}: row 3: image {bomb} is too large to decode safely" in out
    assert "Traceback" not in out and _error_lines(out) == 1


# --------------------------------------------------------------------------- 9. empty data files


@pytest.mark.parametrize("content", ["", "[]", "\n\n"], ids=["empty", "empty-array", "blank-lines"])
def test_an_empty_data_file_is_no_rows_not_a_column_mapping_problem(content: str, tmp_path: Path) -> None:
    path = tmp_path / "rows.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(UserError) as caught:
        load_rows(str(path))
    assert str(caught.value).startswith(f"no rows in {path}")
    assert "--column" not in str(caught.value)


def test_train_on_an_empty_data_file_says_no_rows_in_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("", encoding="utf-8")
    code, out = run_cli(capsys, "train", str(QUICKSTART), f"data.train_files={path}",
                     f"trainer.output_dir={tmp_path / 'runs'}")  # fmt: skip
    assert code == 2, out
    assert f"no rows in {path}" in out and "--column" not in out


# --------------------------------------------------------------------------- 10. infer --input


def _write_requests(path: Path, rows: list[Any], raw_lines: dict[int, str] | None = None) -> Path:
    lines = [json.dumps(row) for row in rows]
    for number, text in (raw_lines or {}).items():
        lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("json", "line 5: not valid JSON"),
        ("duplicate", "line 5: id 'a' repeats line 1"),
        ("type", "line 5: field images must be a path or a list of paths"),
        ("not-an-image", "line 5: cannot read image"),
    ],
)
def test_infer_input_errors_name_their_line_before_the_model_loads(fault, message, tmp_path, capsys) -> None:
    good = small_png(tmp_path / "ok.png")
    rows: list[Any] = [
        {"id": chr(97 + i), "images": [str(good)], "prompt": "q", "type": "OCR"} for i in range(6)
    ]
    raw: dict[int, str] = {}
    if fault == "json":
        raw[5] = '{"id": "e", "prompt": "q", '
    elif fault == "duplicate":
        rows[4]["id"] = "a"
    elif fault == "type":
        rows[4]["images"] = 7
    else:
        fake = tmp_path / "notes.png"
        fake.write_text("these are notes, not pixels", encoding="utf-8")
        rows[4]["images"] = [str(fake)]
    requests = _write_requests(tmp_path / "requests.jsonl", rows, raw)
    code, out = run_cli(capsys, "infer", "--model", str(tmp_path / "no-model"), "--input", str(requests),
                     "--output", str(tmp_path / "answers.jsonl"))  # fmt: skip
    assert code == 2, out
    assert f"{requests} {message}" in out, out
    assert "no-model" not in out and "Traceback" not in out


@pytest.mark.slow
def test_an_image_that_stops_decoding_on_line_21_names_that_line_and_keeps_16_answers(
    tmp_path: Path, capsys, tiny_model_dir: Path
) -> None:
    good = small_png(tmp_path / "ok.png")
    rows = [{"id": f"r{i}", "images": [str(good)], "prompt": f"q{i}", "type": "numerical"} for i in range(24)]
    rows[20]["images"] = [str(truncated_png(tmp_path / "cut.png"))]
    requests = _write_requests(tmp_path / "requests.jsonl", rows)
    answers = tmp_path / "answers.jsonl"
    code, out = run_cli(capsys, "infer", "--model", TINY, "--input", str(requests), "--output", str(answers),
                     "--max-new-tokens", "2", "--batch-size", "8", "--min-pixels", "3136",
                     "--max-pixels", "3136")  # fmt: skip
    assert code == 2, out
    assert f"{requests} line 21: cannot decode image {tmp_path / 'cut.png'}" in out, out
    assert [json.loads(line)["key"] for line in answers.read_text().splitlines()] == [
        f"id:r{i}" for i in range(16)
    ]
