"""Pre-flight check of reward-model data (Thinking-156k layout): shared images and the score histogram.

The published Thinking-156k has many rows pointing at one single image (an upload error its users
reported): a reward model trained on it learns to score reasonings against the wrong picture. Rows
about one question legitimately share its image, so an image counts as *unusually shared* when
more rows use it than `shared_threshold(rows)`, and the report says how many distinct questions
those rows ask (many questions on one image is the upload error's signature). The score
histogram per 0.1 bin shows a skewed label distribution before hours are spent on it.

Nothing is decoded: image identity is the path (or the bytes' hash for embedded images), so the
check of 156k rows takes seconds. `sophiavl dataset check-rm SPEC` renders it; `train-rm` prints
its warnings at start.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sophiavl_cli.data.rm_rows import RMRow
from sophiavl_cli.rewards.rm_quality import NUM_BINS, score_bin

MIN_SHARED_ROWS = 10
SHARED_FRACTION = 0.01


def shared_threshold(rows: int) -> int:
    """Rows above which one image is unusually shared: 1% of the rows, at least 10."""
    return max(MIN_SHARED_ROWS, math.ceil(SHARED_FRACTION * rows))


def image_identity(ref: Any) -> str:
    """A key naming an image without decoding it: its path, or a hash of embedded bytes."""
    if isinstance(ref, dict):
        if ref.get("bytes"):
            return "sha1:" + hashlib.sha1(bytes(ref["bytes"])).hexdigest()
        return str(ref.get("path") or "")
    return str(ref)


@dataclass(frozen=True)
class SharedImage:
    image: str
    rows: int
    questions: int
    example: str  # where the first such row is


@dataclass
class RMDataReport:
    rows: int = 0
    histogram: list[int] = field(default_factory=lambda: [0] * NUM_BINS)  # rows per 0.1 score bin
    off_grid: int = 0  # labels not on the 0.1 grid (they are binned to the nearest)
    without_image: int = 0
    empty_reasoning: int = 0
    shared: list[SharedImage] = field(default_factory=list)
    threshold: int = MIN_SHARED_ROWS

    def warnings(self) -> list[str]:
        """One line per finding worth stopping for."""
        lines = []
        for item in self.shared:
            lines.append(
                f"image {item.image} is used by {item.rows} rows ({item.rows / max(self.rows, 1):.1%}) asking "
                f"{item.questions} different questions (first: {item.example}); check the data's image paths"
            )
        if self.empty_reasoning:
            lines.append(f"{self.empty_reasoning} rows have an empty reasoning")
        if self.rows:
            top = max(self.histogram)
            if top / self.rows > 0.5:
                lines.append(
                    f"{top / self.rows:.0%} of the labels fall in the score bin "
                    f"{self.histogram.index(top) / 10:.1f}; the model may learn to answer it for everything"
                )
        return lines


def check_rm_rows(rows: Sequence[RMRow]) -> RMDataReport:
    """Histogram and shared-image report of labelled rows."""
    report = RMDataReport(rows=len(rows), threshold=shared_threshold(len(rows)))
    users: dict[str, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        report.histogram[score_bin(row.score)] += 1
        report.off_grid += abs(row.score * 10 - round(row.score * 10)) > 1e-6
        report.without_image += not row.images
        report.empty_reasoning += not row.reasoning.strip()
        for key in dict.fromkeys(image_identity(ref) for ref in row.images):
            users[key].append(index)
    for image, indices in users.items():
        if len(indices) > report.threshold:
            questions = Counter(rows[i].question for i in indices)
            report.shared.append(SharedImage(image, len(indices), len(questions), rows[indices[0]].where))
    report.shared.sort(key=lambda item: -item.rows)
    return report
