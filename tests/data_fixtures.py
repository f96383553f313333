"""Builders for small datasets on disk, in the SophiaVL-R1-130k row layout and other formats."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image


def png_bytes(*, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def write_png(
    path: Path, *, color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(color=color, size=size))
    return path


def sophiavl_row(
    *,
    problem_id: int,
    problem: str = "How many apples are there?",
    problem_type: str = "numerical",
    solution: str = "<answer>3</answer>",
    path: str = "./Math/images/a.png",
    options: list[str] | None = None,
    data_type: str = "image",
    data_source: str = "fixture",
) -> dict[str, Any]:
    """One row exactly as the SophiaVL-R1-130k json files hold it (key order included)."""
    return {
        "problem_id": problem_id,
        "problem": problem,
        "data_type": data_type,
        "problem_type": problem_type,
        "options": options or [],
        "process": "<think>counting</think>",
        "solution": solution,
        "path": path,
        "data_source": data_source,
    }


def write_sophiavl_set(root: Path, rows: list[dict[str, Any]] | None = None) -> tuple[Path, Path]:
    """A json file plus its image folder; returns (json path, image base path)."""
    images = root / "datasets"
    write_png(images / "Math" / "images" / "a.png")
    write_png(images / "Chart" / "images" / "b.png", color=(20, 90, 200), size=(80, 40))
    if rows is None:
        rows = [
            sophiavl_row(problem_id=1),
            sophiavl_row(
                problem_id=2,
                problem="Which bar is tallest?",
                problem_type="multiple choice",
                options=["A. red", "B. blue"],
                solution="<answer>B</answer>",
                path="./Chart/images/b.png",
            ),
            sophiavl_row(
                problem_id=3,
                problem="Who wrote Hamlet?",
                problem_type="text",
                solution="<answer>Shakespeare</answer>",
                path="",
                data_type="text",
            ),
        ]
    json_path = root / "json" / "math.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(rows, indent=4), encoding="utf-8")
    return json_path, images


def write_registry(path: Path, entries: dict[str, Any]) -> Path:
    path.write_text(json.dumps(entries, indent=4), encoding="utf-8")
    return path
