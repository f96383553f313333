"""`--data builtin`: a few rows of every benchmark in VLMEvalKit's real TSV layout, made on demand.

So `sophiavl eval --bench MathVista --model builtin:tiny-qwen2.5-vl --data builtin` can be tried
in seconds with no download: the rows use the real column names (option columns, list literals,
an `image` cell that refers to another row's index, MMBench rotations at index + k*1e6), with
small generated images. The TSVs are written once under `$SOPHIAVL_HOME/eval-data/<version>/`.
"""

from __future__ import annotations

import base64
import csv
import io
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from sophiavl_cli.fileio import atomic_write_text
from sophiavl_cli.paths import sophiavl_home

BUILTIN = "builtin"
VERSION = "1"
HME = "Handwritten Mathematical Expression Recognition"


def _mmbench_rows() -> list[dict[str, Any]]:
    """Two questions, each once per rotation of its options (index + k * 1e6), as in MMBench_DEV_EN."""
    questions = [
        (
            "1",
            "Which colour fills most of the picture?",
            ["red", "blue", "green", "white"],
            0,
            "coarse_perception",
            "image_scene",
        ),
        (
            "2",
            "Is the shape a square?",
            ["yes", "no"],
            0,
            "finegrained_perception (instance-level)",
            "object_localization",
        ),
    ]
    rows: list[dict[str, Any]] = []
    for index, question, options, right, l2, category in questions:
        for k in range(len(options)):
            rotated = options[k:] + options[:k]
            answer = "ABCD"[(right - k) % len(options)]
            row = {
                "index": str(int(index) + k * 1_000_000),
                "question": question,
                "hint": "",
                "answer": answer,
                "category": category,
                "l2-category": l2,
                "split": "dev",
                "source": "builtin",
            }
            row.update({"ABCD"[i]: text for i, text in enumerate(rotated)})
            rows.append(row)
    return rows


ROWS: dict[str, list[dict[str, Any]]] = {
    "MathVista_MINI": [
        {
            "index": "1",
            "question": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
            "at the end.\nQuestion: Which is larger?\nChoices:\n(A) 2\n(B) 9",
            "answer": "9",
            "answer_option": "B",
            "choices": "['2', '9']",
            "question_type": "multi_choice",
            "answer_type": "text",
            "precision": "",
            "unit": "",
            "task": "figure question answering",
            "skills": "['arithmetic reasoning']",
        },
        {
            "index": "2",
            "question": "Hint: Please answer the question requiring an integer answer and provide the final value, "
            "e.g., 1, 2, 3, at the end.\nQuestion: How many squares are there?",
            "answer": "14",
            "answer_option": "",
            "choices": "",
            "question_type": "free_form",
            "answer_type": "integer",
            "precision": "",
            "unit": "",
            "task": "math word problem",
            "skills": "['arithmetic reasoning']",
        },
        {
            "index": "3",
            "question": "Hint: Please answer the question requiring a floating-point number with two decimal "
            "places and provide the final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: What is the slope?",
            "answer": "1.45",
            "answer_option": "",
            "choices": "",
            "question_type": "free_form",
            "answer_type": "float",
            "precision": "2.0",
            "unit": "",
            "task": "textbook question answering",
            "skills": "['algebraic reasoning']",
        },
    ],
    "MathVerse_MINI": [
        {
            "index": "1",
            "question": "As shown in the figure, what is angle ABC?\nChoices:\nA:30°\nB:60°",
            "question_for_eval": "What is angle ABC? Choices: A:30° B:60°",
            "answer": "B",
            "question_type": "multi-choice",
            "problem_version": "Vision Only",
            "subject": "plane geometry",
            "subfield": "angle",
        },
        {
            "index": "2",
            "question": "What is the area of the rectangle?",
            "question_for_eval": "What is the area of the rectangle?",
            "answer": "12",
            "question_type": "free-form",
            "problem_version": "Text Lite",
            "subject": "plane geometry",
            "subfield": "area",
        },
    ],
    "MathVision": [
        {
            "index": "1",
            "question": "Which number is shown?",
            "answer": "C",
            "A": "1",
            "B": "2",
            "C": "3",
            "category": "algebra",
            "level": "2",
        },
        {
            "index": "2",
            "question": "How long is the segment?",
            "answer": "\\frac{1}{2}",
            "category": "metric geometry - length",
            "level": "3",
        },
    ],
    "MMMU_DEV_VAL": [
        {
            "index": "1",
            "id": "validation_Art_1",
            "question": "Look at <image 1>. Which animal is it?",
            "answer": "B",
            "A": "cat",
            "B": "dog",
            "category": "Art",
            "split": "validation",
        },
        {
            "index": "2",
            "id": "validation_Math_1",
            "question": "What is x?",
            "answer": "3.5",
            "category": "Math",
            "split": "validation",
        },
    ],
    "MMStar": [
        {
            "index": "1",
            "question": "What colour is the picture?",
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
            "question": "How many objects are there?",
            "answer": "D",
            "A": "1",
            "B": "2",
            "C": "3",
            "D": "4",
            "category": "fine-grained perception",
            "l2-category": "object counting",
        },
    ],
    "MMBench_DEV_EN": _mmbench_rows(),
    "ChartQA_TEST": [
        {"index": "1", "question": "What share does A have?", "answer": "45%", "split": "human_test"},
        {"index": "2", "question": "Which label is on top?", "answer": "Apples", "split": "augmented_test"},
    ],
    "OCRBench": [
        {
            "index": "1",
            "question": "what is written in the image?",
            "answer": "['STOP']",
            "category": "Regular Text Recognition",
            "dataset": "IIIT5K",
        },
        {
            "index": "2",
            "question": "Please write out the expression of the formula in the image using LaTeX format.",
            "answer": "['x ^ { 2 }']",
            "category": HME,
            "dataset": "HME100k",
        },
    ],
    "MME": [
        {
            "index": "1",
            "question": "Is there a red area in the image? Please answer yes or no.",
            "answer": "Yes",
            "category": "existence",
            "image_path": "existence/1.png",
        },
        {
            "index": "2",
            "question": "Is there a dog in the image? Please answer yes or no.",
            "answer": "No",
            "category": "existence",
            "image_path": "existence/1.png",
        },
        {
            "index": "3",
            "question": "Is the answer to 1+1 equal to 2? Please answer yes or no.",
            "answer": "Yes",
            "category": "numerical_calculation",
            "image_path": "numerical_calculation/1.png",
        },
        {
            "index": "4",
            "question": "Is the answer to 1+1 equal to 3? Please answer yes or no.",
            "answer": "No",
            "category": "numerical_calculation",
            "image_path": "numerical_calculation/1.png",
        },
    ],
}
_COLOURS = ((200, 40, 40), (40, 60, 200), (40, 160, 60), (230, 200, 40))


def _png(number: int) -> str:
    """A small picture (a coloured field with a square), base64 as in a VLMEvalKit TSV cell."""
    image = Image.new("RGB", (56, 42), _COLOURS[number % len(_COLOURS)])
    ImageDraw.Draw(image).rectangle((14, 10, 34, 30), outline=(255, 255, 255), width=2)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def tsv_text(name: str) -> str:
    """The TSV of one built-in benchmark; the second row of a pair shares the first one's image."""
    rows = ROWS[name]
    columns = ["index", "image", *sorted({k for row in rows for k in row} - {"index"})]
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(columns)
    for number, row in enumerate(rows):
        shares = name in ("MME", "MathVerse_MINI") and number % 2 == 1
        image = rows[number - 1]["index"] if shares else _png(number)
        writer.writerow([image if column == "image" else row.get(column, "") for column in columns])
    return buffer.getvalue()


def builtin_data_dir() -> Path:
    """The folder holding every built-in TSV (written on first use)."""
    folder = sophiavl_home() / "eval-data" / f"v{VERSION}"
    for name in ROWS:
        path = folder / f"{name}.tsv"
        if not path.is_file():
            atomic_write_text(path, tsv_text(name))
    return folder
