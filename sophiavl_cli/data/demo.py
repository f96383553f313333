"""`builtin:demo`: a small visual-reasoning set drawn with PIL, in the SophiaVL-R1-130k row layout.

It is both the quickstart's training data and a fixture of the real format: `train.json` /
`val.json` rows carry `problem_id, problem, data_type, problem_type, options, process, solution,
path, data_source`, images live under `images/`, and `dataset_info.json` registers both splits with
the released column mapping (`problem`->`prompt`, `solution`->`answer`, `path`->`images`).

Every question type appears: numerical (count shapes; CLEVR-Math style "subtract all ..."),
multiple choice (options "A. 3", ...; solution `<answer>B</answer>`), OCR (a rendered word),
free-form ("a red circle") and text-only rows (no image).

Generation is seeded and uses only PIL's built-in bitmap font (not the FreeType default, whose
glyphs depend on the FreeType version), so two builds are byte-identical. The set is built once
into `$SOPHIAVL_HOME/builtin/demo-<version>/` (temp folder + rename under a file lock).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from sophiavl_cli.data.registry import RELEASED_COLUMNS
from sophiavl_cli.paths import builtin_dir

DEMO_VERSION = 1
DEMO_SEED = 20250523
SPLIT_SIZES = {"train": 64, "val": 16}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 180),
}
SHAPES = ("circle", "square", "triangle")
WORDS = (
    "river", "cloud", "apple", "stone", "tiger", "piano", "lemon", "orbit",
    "maple", "candle", "rocket", "garden", "silver", "window", "forest", "planet",
)  # fmt: skip
TEXT_QA = (
    ("What color do you get by mixing blue and yellow paint?", "green"),
    ("What is the opposite of the word 'hot'?", "cold"),
    ("Which planet is known as the red planet?", "Mars"),
    ("What do bees make?", "honey"),
    ("What is a baby cat called?", "kitten"),
    ("What is frozen water called?", "ice"),
)
SIZE = 160  # shape images are SIZE x SIZE; OCR images 224 x 112
GRID = 4  # shapes sit in a GRID x GRID layout of cells, so they never overlap
Shape = tuple[str, str]  # (color, shape)


# --------------------------------------------------------------------------- drawing


def _draw_shapes(shapes: list[Shape], rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), (245, 245, 240))
    draw = ImageDraw.Draw(image)
    cell = SIZE // GRID
    for (color, shape), slot in zip(shapes, rng.sample(range(GRID * GRID), len(shapes)), strict=True):
        x0, y0 = (slot % GRID) * cell + 6, (slot // GRID) * cell + 6
        x1, y1 = x0 + cell - 12, y0 + cell - 12
        fill = COLORS[color]
        if shape == "circle":
            draw.ellipse((x0, y0, x1, y1), fill=fill, outline=(30, 30, 30))
        elif shape == "square":
            draw.rectangle((x0, y0, x1, y1), fill=fill, outline=(30, 30, 30))
        else:
            draw.polygon([((x0 + x1) // 2, y0), (x1, y1), (x0, y1)], fill=fill, outline=(30, 30, 30))
    return image


def _draw_word(word: str) -> Image.Image:
    font = getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()
    small = Image.new("RGB", (56, 28), (255, 255, 255))
    ImageDraw.Draw(small).text((2, 8), word, fill=(0, 0, 0), font=font)
    return small.resize((224, 112), Image.Resampling.NEAREST)  # bitmap glyphs stay crisp


def _random_shapes(rng: random.Random, low: int, high: int) -> list[Shape]:
    return [(rng.choice(list(COLORS)), rng.choice(SHAPES)) for _ in range(rng.randint(low, high))]


def _plural(shape: str) -> str:
    return shape + "s"


# --------------------------------------------------------------------------- question kinds
# Each returns (row fields, image or None). problem_id, path and data_source are filled in later.

Made = tuple[dict[str, Any], Image.Image | None]


def _count(rng: random.Random) -> Made:
    shapes = _random_shapes(rng, 2, 7)
    row = {
        "problem": "<image>How many shapes are in the image?",
        "problem_type": "numerical",
        "process": f"I count each shape one by one and find {len(shapes)} shapes.",
        "solution": f"<answer>{len(shapes)}</answer>",
    }
    return row, _draw_shapes(shapes, rng)


def _count_color(rng: random.Random) -> Made:
    shapes = _random_shapes(rng, 3, 8)
    color = rng.choice([c for c, _ in shapes])
    n = sum(1 for c, _ in shapes if c == color)
    row = {
        "problem": f"How many {color} objects are there?",
        "problem_type": "numerical",
        "process": f"Looking only at the {color} objects, there are {n} of them.",
        "solution": f"<answer>{n}</answer>",
    }
    return row, _draw_shapes(shapes, rng)


def _subtract(rng: random.Random) -> Made:
    shapes = _random_shapes(rng, 3, 8)
    color, shape = rng.choice(shapes)
    removed = sum(1 for s in shapes if s == (color, shape))
    left = len(shapes) - removed
    row = {
        "problem": f"Subtract all {color} {_plural(shape)}. How many objects are left?",
        "problem_type": "numerical",
        "process": f"There are {len(shapes)} objects; {removed} are {color} {_plural(shape)}. "
        f"{len(shapes)} - {removed} = {left}.",
        "solution": f"<answer>{left}</answer>",
    }
    return row, _draw_shapes(shapes, rng)


def _multiple_choice(rng: random.Random) -> Made:
    shapes = _random_shapes(rng, 2, 8)
    shape = rng.choice([s for _, s in shapes])
    n = sum(1 for _, s in shapes if s == shape)
    start = max(0, n - rng.randint(0, 3))
    letters = "ABCD"
    options = [f"{letter}. {start + i}" for i, letter in enumerate(letters)]
    answer = letters[n - start]
    row = {
        # The released code appends the options right after the question, so the question ends the line.
        "problem": f"How many {_plural(shape)} are in the image? Choose the correct option.\n",
        "problem_type": "multiple choice",
        "options": options,
        "process": f"I count {n} {_plural(shape)}, which is option {answer}.",
        "solution": f"<answer>{answer}</answer>",
    }
    return row, _draw_shapes(shapes, rng)


def _ocr(rng: random.Random) -> Made:
    word = rng.choice(WORDS)
    row = {
        "problem": "What word is written in the image?",
        "problem_type": "OCR",
        "process": f"The image shows black letters spelling '{word}'.",
        "solution": f"<answer>{word}</answer>",
    }
    return row, _draw_word(word)


def _free_form(rng: random.Random) -> Made:
    color, shape = rng.choice(list(COLORS)), rng.choice(SHAPES)
    row = {
        "problem": "Describe the object in the image in a few words.",
        "problem_type": "free-form",
        "process": f"There is a single {shape} and it is {color}.",
        "solution": f"<answer>a {color} {shape}</answer>",
    }
    return row, _draw_shapes([(color, shape)], rng)


def _text_arithmetic(rng: random.Random) -> Made:
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    row = {
        "problem": f"What is {a} + {b}?",
        "problem_type": "numerical",
        "process": f"Adding {a} and {b} gives {a + b}.",
        "solution": f"<answer>{a + b}</answer>",
    }
    return row, None


def _text_knowledge(rng: random.Random) -> Made:
    question, answer = rng.choice(TEXT_QA)
    row = {
        "problem": question,
        "problem_type": "text",
        "process": f"This is common knowledge: the answer is {answer}.",
        "solution": f"<answer>{answer}</answer>",
    }
    return row, None


KINDS: tuple[tuple[str, Callable[[random.Random], Made]], ...] = (
    ("count", _count),
    ("count-color", _count_color),
    ("subtract", _subtract),
    ("multiple-choice", _multiple_choice),
    ("ocr", _ocr),
    ("free-form", _free_form),
    ("text-arithmetic", _text_arithmetic),
    ("text-knowledge", _text_knowledge),
)


# --------------------------------------------------------------------------- building


def demo_rows(split: str, images_dir: Path | None = None) -> list[dict[str, Any]]:
    """The rows of one split (and, given `images_dir`, their PNG files written there)."""
    rng = random.Random(f"{DEMO_SEED}:{split}")
    first_id = 1 if split == "train" else 100_001
    rows = []
    for i in range(SPLIT_SIZES[split]):
        kind, make = KINDS[i % len(KINDS)]
        fields, image = make(rng)
        problem_id = first_id + i
        path = f"images/{split}_{problem_id:06d}.png" if image is not None else ""
        if image is not None and images_dir is not None:
            image.save(images_dir / Path(path).name, format="PNG", optimize=False, compress_level=6)
        rows.append(
            {
                "problem_id": problem_id,
                "problem": fields["problem"],
                "data_type": "image" if image is not None else "text",
                "problem_type": fields["problem_type"],
                "options": fields.get("options", []),
                "process": fields["process"],
                "solution": fields["solution"],
                "path": path,
                "data_source": f"sophiavl-demo/{kind}",
            }
        )
    return rows


def demo_registry() -> dict[str, dict[str, Any]]:
    """The demo's own `dataset_info.json`: one entry per split, released column mapping."""
    return {
        f"demo_{split}": {
            "file_path": f"{split}.json",
            "image_base_path": ".",
            "columns": dict(RELEASED_COLUMNS),
        }
        for split in SPLIT_SIZES
    }


def build_demo(out_dir: Path) -> Path:
    """Write the demo set into `out_dir` (created; must not already hold files) and return it."""
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_SIZES:
        rows = demo_rows(split, images_dir)
        (out_dir / f"{split}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", "utf-8")
    registry = json.dumps(demo_registry(), indent=4) + "\n"
    (out_dir / "dataset_info.json").write_text(registry, "utf-8")
    return out_dir


def demo_dir() -> Path:
    """Where the demo set of this version lives (it may not be built yet)."""
    return builtin_dir() / f"demo-{DEMO_VERSION}"


def resolve_demo() -> Path:
    """The built demo folder, building it on first use (safe when several processes race)."""
    from filelock import FileLock

    target = demo_dir()
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(os.fspath(target.parent / f".{target.name}.lock")):
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build_demo(staging)
            os.chmod(staging, 0o755)  # mkdtemp makes it private; the cache is ordinary data
            os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
