"""`builtin:thinking-demo`: a synthetic set in the Thinking-156k layout whose scores follow a rule.

Rows carry `question`, `images` (one PNG each), `reasoning` and `score` in {0, 0.1, ..., 1.0}, the
columns the thinking reward model is fine-tuned on. The rule a small model can learn: the reasoning
walks through ten steps, each marked "Step k is correct." or "Step k is wrong.", and the score is
the share of correct steps, which the reasoning's last sentence also states ("So 7 of 10 steps are
correct."): a visible token pattern, so the built-in tiny model learns it in a few CPU minutes: `sophiavl train-rm recipes/thinking-rm-quickstart.yaml` shows learning
(held-out Spearman rising from about 0), not just running. The final answer is right only when
every step is.

Scores are balanced (every score the same number of times per split). Built once into
`$SOPHIAVL_HOME/builtin/thinking-demo-<version>/` like `builtin:demo` (seeded, byte-identical).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from sophiavl_cli.data.demo import _draw_shapes, _random_shapes
from sophiavl_cli.paths import builtin_dir

THINKING_DEMO_VERSION = 3
THINKING_DEMO_SEED = 20250524
SPLIT_SIZES = {"train": 352, "val": 55}  # multiples of the 11 scores
NUM_STEPS = 10
GOOD, BAD = "correct", "wrong"


def rule_score(reasoning: str) -> float | None:
    """The score the set's rule gives a reasoning text: its correct steps / 10 (None: no steps).

    Example:
        >>> rule_score("Step 1 is correct. Step 2 is wrong.")
        0.1
    """
    good, bad = reasoning.count(f" is {GOOD}."), reasoning.count(f" is {BAD}.")
    return round(good / NUM_STEPS, 1) if good + bad else None


def _row(rng: random.Random, index: int, split: str, count: int, images_dir: Path | None) -> dict[str, Any]:
    shapes = _random_shapes(rng, 2, 6)
    color, shape = rng.choice(shapes)
    same = sum(1 for s in shapes if s == (color, shape))
    path = f"images/{split}_{index:05d}.png"
    if images_dir is not None:
        _draw_shapes(shapes, rng).save(images_dir / Path(path).name, format="PNG", compress_level=6)
    good = set(rng.sample(range(NUM_STEPS), count))
    steps = " ".join(f"Step {i + 1} is {GOOD if i in good else BAD}." for i in range(NUM_STEPS))
    answer = same if count == NUM_STEPS else max(0, same + rng.choice((-1, 1)))
    return {
        "id": f"{split}-{index}",
        "question": f"<image>How many {color} {shape}s are in the image?",
        "images": [path],
        "reasoning": f"<think>Let me check each step. {steps} So {count} of {NUM_STEPS} steps are correct."
        f"</think><answer>{answer}</answer>",
        "score": round(count / NUM_STEPS, 1),
    }


def thinking_demo_rows(split: str, images_dir: Path | None = None) -> list[dict[str, Any]]:
    """The rows of one split (and, given `images_dir`, their PNG files written there)."""
    rng = random.Random(f"{THINKING_DEMO_SEED}:{split}")
    counts = [i % (NUM_STEPS + 1) for i in range(SPLIT_SIZES[split])]
    rng.shuffle(counts)
    return [_row(rng, i, split, count, images_dir) for i, count in enumerate(counts)]


def thinking_demo_registry() -> dict[str, dict[str, Any]]:
    """The set's own `dataset_info.json`: one entry per split (columns already internal)."""
    return {
        f"thinking_demo_{split}": {"file_path": f"{split}.json", "image_base_path": ".", "columns": {}}
        for split in SPLIT_SIZES
    }


def build_thinking_demo(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLIT_SIZES:
        rows = thinking_demo_rows(split, images_dir)
        (out_dir / f"{split}.json").write_text(json.dumps(rows, indent=1) + "\n", "utf-8")
    (out_dir / "dataset_info.json").write_text(json.dumps(thinking_demo_registry(), indent=4) + "\n", "utf-8")
    return out_dir


def resolve_thinking_demo() -> Path:
    """The built folder, building it on first use (safe when several processes race)."""
    from filelock import FileLock

    target = builtin_dir() / f"thinking-demo-{THINKING_DEMO_VERSION}"
    if target.is_dir():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(os.fspath(target.parent / f".{target.name}.lock")):
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            build_thinking_demo(staging)
            os.chmod(staging, 0o755)
            os.rename(staging, target)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
    return target
