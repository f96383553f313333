"""Tiny benchmark fixtures in both layouts (VLMEvalKit TSV, Hugging Face parquet), written by tests.

Every benchmark gets a few rows covering its answer kinds; `RIGHT[bench][index]` is a response
that the official rules must score as correct, so a fixture scored with its right responses hits
the benchmark's maximum.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from sophiavl_cli.eval.benchmarks.ocrbench import HME
from sophiavl_cli.eval.builtin import ROWS as BUILTIN_ROWS


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    """A small solid-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


RED, BLUE = png_bytes((200, 30, 30)), png_bytes((30, 30, 200))

# bench -> rows in the VLMEvalKit TSV layout (without the image column, which write_tsv adds)
TSV_ROWS: dict[str, list[dict[str, Any]]] = {
    "MathVista": [
        {
            "index": "1",
            "question": "Which is largest?\nChoices:\n(A) 2\n(B) 9",
            "answer": "9",
            "question_type": "multi_choice",
            "answer_type": "text",
            "precision": "",
            "choices": "['2', '9']",
            "task": "figure question answering",
            "skills": "['arithmetic reasoning']",
        },
        {
            "index": "2",
            "question": "How many?",
            "answer": "14",
            "question_type": "free_form",
            "answer_type": "integer",
            "precision": "",
            "choices": "",
            "task": "math word problem",
            "skills": "['arithmetic reasoning']",
        },
        {
            "index": "3",
            "question": "Slope?",
            "answer": "1.45",
            "question_type": "free_form",
            "answer_type": "float",
            "precision": "2.0",
            "choices": "",
            "task": "textbook question answering",
            "skills": "['algebraic reasoning']",
        },
    ],
    "MathVerse": [
        {
            "index": "1",
            "question": "Angle? Choices: A:30 B:60",
            "answer": "B",
            "question_type": "multi-choice",
            "problem_version": "Vision Only",
        },
        {
            "index": "2",
            "question": "Area?",
            "answer": "12",
            "question_type": "free-form",
            "problem_version": "Text Lite",
        },
    ],
    "MathVision": [
        {
            "index": "1",
            "question": "Which?",
            "answer": "C",
            "A": "1",
            "B": "2",
            "C": "3",
            "category": "algebra",
        },
        {
            "index": "2",
            "question": "Length?",
            "answer": "\\frac{1}{2}",
            "category": "metric geometry - length",
        },
    ],
    "MMMU": [
        {
            "index": "1",
            "question": "Look at <image 1>. Which?",
            "answer": "B",
            "A": "cat",
            "B": "dog",
            "category": "Art",
            "split": "validation",
        },
        {"index": "2", "question": "Value?", "answer": "3.5", "category": "Math", "split": "validation"},
        {
            "index": "3",
            "question": "Dev item",
            "answer": "A",
            "A": "x",
            "B": "y",
            "category": "Math",
            "split": "dev",
        },
    ],
    "MMStar": [
        {
            "index": "1",
            "question": "Colour?",
            "answer": "A",
            "A": "red",
            "B": "blue",
            "C": "green",
            "D": "pink",
            "category": "coarse perception",
            "l2-category": "image style & quality",
        },
        {
            "index": "2",
            "question": "Count?",
            "answer": "D",
            "A": "1",
            "B": "2",
            "C": "3",
            "D": "4",
            "category": "fine-grained perception",
            "l2-category": "object counting",
        },
    ],
    "ChartQA": [
        {"index": "1", "question": "Share of A?", "answer": "45%", "split": "human"},
        {"index": "2", "question": "Top label?", "answer": "Apples", "split": "augmented"},
    ],
    "OCRBench": [
        {
            "index": "1",
            "question": "Read the text.",
            "answer": "['STOP']",
            "category": "Regular Text Recognition",
        },
        {"index": "2", "question": "Write the formula.", "answer": "['x ^ { 2 }']", "category": HME},
    ],
    "MME": [
        {
            "index": "1",
            "question": "Is there a cat? Please answer yes or no.",
            "answer": "Yes",
            "category": "existence",
            "image_path": "existence/1.png",
        },
        {
            "index": "2",
            "question": "Is there a dog? Please answer yes or no.",
            "answer": "No",
            "category": "existence",
            "image_path": "existence/1.png",
        },
        {
            "index": "3",
            "question": "Is 1+1=2? Please answer yes or no.",
            "answer": "Yes",
            "category": "numerical_calculation",
            "image_path": "numerical/1.png",
        },
        {
            "index": "4",
            "question": "Is 1+1=3? Please answer yes or no.",
            "answer": "No",
            "category": "numerical_calculation",
            "image_path": "numerical/1.png",
        },
    ],
}

# MMBench: two questions, each once per rotation of its options (index + k * 1e6)
TSV_ROWS["MMBench"] = BUILTIN_ROWS["MMBench_DEV_EN"]

# bench -> index -> a response the rules score as right (indexes as each layout names them)
RIGHT: dict[str, dict[str, str]] = {
    "MMBench": {row["index"]: f"<answer>{row['answer']}</answer>" for row in TSV_ROWS["MMBench"]},
    "MathVista": {"1": "<answer>B</answer>", "2": "<answer>14</answer>", "3": "<answer>1.449</answer>"},
    "MathVerse": {"1": "<answer>B</answer>", "2": "<answer>12</answer>"},
    "MathVision": {"1": "<answer>C</answer>", "2": "<answer>0.5</answer>"},
    "MMMU": {"1": "<answer>(B)</answer>", "2": "<answer>3.50</answer>", "3": "<answer>A</answer>"},
    "MMStar": {"1": "<answer>A</answer>", "2": "<answer>D. 4</answer>"},
    "ChartQA": {"1": "<answer>0.46</answer>", "2": "<answer>apples</answer>"},
    "OCRBench": {"1": "<answer>stop</answer>", "2": "<answer>x^{2}</answer>"},
    "MME": {str(i): f"<answer>{a}</answer>" for i, a in enumerate(["Yes", "No", "Yes", "No"], start=1)},
}
MAX_SCORE = {"OCRBench": 2.0, "MME": 400.0}  # others: 100 (%)


def write_tsv(bench: str, folder: Path, *, name: str | None = None, reference_second: bool = True) -> Path:
    """`<folder>/<NAME>.tsv` in VLMEvalKit's layout; row 2 refers to row 1's image by index."""
    from sophiavl_cli.eval.benchmarks import get_benchmark

    rows = TSV_ROWS[bench]
    columns = sorted({key for row in rows for key in row}, key=lambda c: (c != "index", c))
    columns.insert(1, "image")
    path = folder / f"{name or get_benchmark(bench).tsv_name}.tsv"
    folder.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t")
        writer.writerow(columns)
        for number, row in enumerate(rows):
            if number == 1 and reference_second:
                image = rows[0]["index"]
            else:
                image = base64.b64encode(RED if number % 2 == 0 else BLUE).decode("ascii")
            writer.writerow([image if c == "image" else row.get(c, "") for c in columns])
    return path


def _img(data: bytes) -> dict[str, Any]:
    return {"bytes": data, "path": None}


HF_ROWS: dict[str, list[dict[str, Any]]] = {
    "MathVista": [
        {
            "pid": "1",
            "question": "Which is largest?",
            "query": "Hint: ...\nQuestion: Which is largest?",
            "choices": ["2", "9"],
            "unit": "",
            "precision": None,
            "answer": "9",
            "question_type": "multi_choice",
            "answer_type": "text",
            "metadata": {"task": "figure question answering", "skills": ["arithmetic reasoning"]},
            "decoded_image": _img(RED),
            "image": "images/1.png",
        },
        {
            "pid": "2",
            "question": "How many?",
            "query": "Question: How many?",
            "choices": None,
            "unit": "",
            "precision": None,
            "answer": "14",
            "question_type": "free_form",
            "answer_type": "integer",
            "metadata": {"task": "math word problem", "skills": ["arithmetic reasoning"]},
            "decoded_image": _img(BLUE),
            "image": "images/2.png",
        },
        {
            "pid": "3",
            "question": "Slope?",
            "query": "Question: Slope?",
            "choices": None,
            "unit": "",
            "precision": 2.0,
            "answer": "1.45",
            "question_type": "free_form",
            "answer_type": "float",
            "metadata": {"task": "textbook question answering", "skills": ["algebraic reasoning"]},
            "decoded_image": _img(RED),
            "image": "images/3.png",
        },
    ],
    "MathVerse": [
        {
            "sample_index": "1",
            "problem_index": "1",
            "problem_version": "Vision Only",
            "question": "Angle?",
            "image": _img(RED),
            "answer": "B",
            "question_type": "multi-choice",
            "metadata": {"subject": "plane geometry", "subfield": "angle"},
            "question_for_eval": "Angle?",
        },
        {
            "sample_index": "2",
            "problem_index": "1",
            "problem_version": "Text Lite",
            "question": "Area?",
            "image": _img(BLUE),
            "answer": "12",
            "question_type": "free-form",
            "metadata": {"subject": "plane geometry", "subfield": "area"},
            "question_for_eval": "Area?",
        },
    ],
    "MathVision": [
        {
            "id": "1",
            "question": "Which?",
            "options": ["1", "2", "3"],
            "image": "images/1.jpg",
            "decoded_image": _img(RED),
            "answer": "C",
            "level": 2,
            "subject": "algebra",
        },
        {
            "id": "2",
            "question": "Length?",
            "options": [],
            "image": "images/2.jpg",
            "decoded_image": _img(BLUE),
            "answer": "\\frac{1}{2}",
            "level": 3,
            "subject": "metric geometry - length",
        },
    ],
    "MMStar": [
        {
            "index": 1,
            "question": "Colour?\nOptions: A: red, B: blue, C: green, D: pink",
            "image": _img(RED),
            "answer": "A",
            "category": "coarse perception",
            "l2_category": "image style & quality",
        },
        {
            "index": 2,
            "question": "Count?\nOptions: A: 1, B: 2, C: 3, D: 4",
            "image": _img(BLUE),
            "answer": "D",
            "category": "fine-grained perception",
            "l2_category": "object counting",
        },
    ],
    "ChartQA": [
        {"type": "human_test", "question": "Share of A?", "answer": "45%", "image": _img(RED)},
        {"type": "augmented_test", "question": "Top label?", "answer": "Apples", "image": _img(BLUE)},
    ],
    "OCRBench": [
        {
            "dataset": "IIIT5K",
            "question": "Read the text.",
            "question_type": "Regular Text Recognition",
            "answer": ["STOP"],
            "image": _img(RED),
        },
        {
            "dataset": "HME100k",
            "question": "Write the formula.",
            "question_type": HME,
            "answer": ["x ^ { 2 }"],
            "image": _img(BLUE),
        },
    ],
    "MME": [
        {
            "question_id": "existence/1.png",
            "image": _img(RED),
            "question": "Is there a cat?",
            "answer": "Yes",
            "category": "existence",
        },
        {
            "question_id": "existence/1.png",
            "image": _img(RED),
            "question": "Is there a dog?",
            "answer": "No",
            "category": "existence",
        },
        {
            "question_id": "numerical/1.png",
            "image": _img(BLUE),
            "question": "1+1=2?",
            "answer": "Yes",
            "category": "numerical_calculation",
        },
        {
            "question_id": "numerical/1.png",
            "image": _img(BLUE),
            "question": "1+1=3?",
            "answer": "No",
            "category": "numerical_calculation",
        },
    ],
}
HF_ROWS["MMBench"] = [
    {**row, "index": int(row["index"]), "image": _img(RED if n % 2 else BLUE)}
    for n, row in enumerate(TSV_ROWS["MMBench"])
]
MMMU_HF: dict[str, list[dict[str, Any]]] = {
    "Art": [
        {
            "id": "validation_Art_1",
            "question": "Look at <image 1>. Which?",
            "options": "['cat', 'dog']",
            "answer": "B",
            "question_type": "multiple-choice",
            "image_1": _img(RED),
            "image_2": None,
        },
    ],
    "Math": [
        {
            "id": "validation_Math_1",
            "question": "Value?",
            "options": "[]",
            "answer": "3.5",
            "question_type": "open",
            "image_1": _img(BLUE),
            "image_2": _img(RED),
        },
    ],
}
HF_SPLIT = {
    "MathVista": "testmini",
    "MathVerse": "testmini",
    "MathVision": "test",
    "MMStar": "val",
    "ChartQA": "test",
    "OCRBench": "test",
    "MME": "test",
    "MMMU": "validation",
    "MMBench": "dev",
}


def hf_right(bench: str) -> dict[str, str]:
    """Right responses keyed by the HF layout's indexes."""
    right = RIGHT[bench]
    if bench == "MMMU":
        return {"validation_Art_1": right["1"], "validation_Math_1": right["2"]}
    if bench == "MME":
        return {f"{row['question_id']}#{n}": right[str(n)] for n, row in enumerate(HF_ROWS["MME"], start=1)}
    return right


def write_parquet(bench: str, folder: Path) -> Path:
    """The HF repository layout: `<folder>/[<config>/]<split>-00000-of-00001.parquet`; returns `folder`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    split = HF_SPLIT[bench]
    tables = MMMU_HF if bench == "MMMU" else {"": HF_ROWS[bench]}
    if bench == "MMBench":  # lmms-lab/MMBench: one folder per config; `cn` must be ignored
        tables = {"en": HF_ROWS[bench], "cn": HF_ROWS[bench][:1]}
    for config, rows in tables.items():
        target = folder / config if config else folder / "data"
        target.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), target / f"{split}-00000-of-00001.parquet")
        # a second split that must be ignored
        pq.write_table(pa.Table.from_pylist(rows[:1]), target / "other-00000-of-00001.parquet")
    return folder


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    """JSON lines, one record each."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path
