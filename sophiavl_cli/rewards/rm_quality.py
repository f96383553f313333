"""How good a thinking reward model is on labelled rows: pure functions over (label, prediction) lists.

One report for every way a score is produced (the SFT loop's held-out pass, `sophiavl eval-rm` on a
served or local model): mean absolute error, the share within +-0.1 of the label, Spearman's rank
correlation, a confusion table by 0.1 bin and a calibration plot (mean label per predicted bin).
A prediction of None is a failed call (unparseable reply, HTTP error): counted, left out of the
other numbers.

Spearman is scipy's when scipy is installed, else the same statistic computed here (Pearson
correlation of average ranks, ties sharing their mean rank). A constant prediction (or label)
column has no rank correlation; it is reported as 0.0, "no monotone association", so an untrained
model that answers one score for everything reads as 0 rather than NaN. With no scored row (or
one) there is nothing to compare: MAE, within 0.1 and Spearman are undefined, NaN here, `null` in
`report.json` and `n/a` on screen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from sophiavl_cli.console import stat
from sophiavl_cli.fileio import atomic_path, atomic_write_json, atomic_write_text

NUM_BINS = 11  # scores 0, 0.1, ..., 1.0
WITHIN = 0.1


def score_bin(score: float) -> int:
    """The 0.1 bin of a score in [0, 1]: round(score * 10), so 0.74 -> 7 and 0.75 -> 8."""
    return int(min(NUM_BINS - 1, max(0, math.floor(score * 10 + 0.5 + 1e-9))))


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span.

    Example:
        >>> average_ranks([0.5, 0.1, 0.5]).tolist()
        [2.5, 1.0, 2.5]
    """
    array = np.asarray(values, dtype=np.float64)
    order = np.argsort(array, kind="mergesort")
    ranks = np.empty(len(array), dtype=np.float64)
    sorted_values = array[order]
    start = 0
    while start < len(array):
        end = start
        while end + 1 < len(array) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(labels: Sequence[float], predictions: Sequence[float]) -> float:
    """Spearman's rho; 0.0 when either side is constant; NaN (undefined) for fewer than two pairs."""
    if len(labels) < 2:
        return float("nan")
    if len(set(labels)) < 2 or len(set(predictions)) < 2:
        return 0.0
    try:
        from scipy.stats import spearmanr
    except ImportError:
        x, y = average_ranks(labels), average_ranks(predictions)
        x, y = x - x.mean(), y - y.mean()
        return float((x * y).sum() / math.sqrt(float((x * x).sum() * (y * y).sum())))
    return float(spearmanr(labels, predictions).statistic)


@dataclass(frozen=True)
class RMQuality:
    """The report of one evaluation. `confusion[label_bin][predicted_bin]` counts rows."""

    rows: int
    scored: int
    failures: int
    mae: float
    within: float
    spearman: float
    confusion: list[list[int]]
    mean_label_per_bin: list[float | None]  # calibration: mean label of rows predicted in each bin

    def to_json(self) -> dict[str, object]:
        return asdict(self)


def rm_quality(labels: Sequence[float], predictions: Sequence[float | None]) -> RMQuality:
    """Compare predictions with labels (same order); None predictions count as failures."""
    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    pairs = [(float(y), float(p)) for y, p in zip(labels, predictions, strict=True) if p is not None]
    confusion = [[0] * NUM_BINS for _ in range(NUM_BINS)]
    sums, counts = [0.0] * NUM_BINS, [0] * NUM_BINS
    for label, prediction in pairs:
        confusion[score_bin(label)][score_bin(prediction)] += 1
        sums[score_bin(prediction)] += label
        counts[score_bin(prediction)] += 1
    errors = [abs(p - y) for y, p in pairs]
    return RMQuality(
        rows=len(labels),
        scored=len(pairs),
        failures=len(labels) - len(pairs),
        mae=math.fsum(errors) / len(errors) if errors else float("nan"),
        within=sum(e <= WITHIN + 1e-9 for e in errors) / len(errors) if errors else float("nan"),
        spearman=spearman([y for y, _ in pairs], [p for _, p in pairs]),
        confusion=confusion,
        mean_label_per_bin=[s / c if c else None for s, c in zip(sums, counts, strict=True)],
    )


def confusion_markdown(quality: RMQuality) -> str:
    """The confusion table as Markdown: rows are label bins, columns predicted bins."""
    heads = [f"{b / 10:.1f}" for b in range(NUM_BINS)]
    lines = ["| label \\ predicted | " + " | ".join(heads) + " |", "|---" * (NUM_BINS + 1) + "|"]
    for b, row in enumerate(quality.confusion):
        lines.append(f"| {heads[b]} | " + " | ".join(str(n) for n in row) + " |")
    return "\n".join(lines) + "\n"


def plot_calibration(
    quality: RMQuality, path: Path, title: str = "Thinking reward model calibration"
) -> Path:
    """Mean label per predicted 0.1 bin against the diagonal, with the row count per bin as bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    centers = [b / 10 for b in range(NUM_BINS)]
    counts = [sum(quality.confusion[y][b] for y in range(NUM_BINS)) for b in range(NUM_BINS)]
    fig, ax = plt.subplots(figsize=(5.6, 5.0), dpi=120)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    points = [(c, m) for c, m in zip(centers, quality.mean_label_per_bin, strict=True) if m is not None]
    if points:
        ax.plot(*zip(*points, strict=True), marker="o", linewidth=2, label="mean label per predicted bin")
    twin = ax.twinx()
    twin.bar(centers, counts, width=0.06, alpha=0.2, color="C1")
    twin.set_ylabel("rows predicted in the bin")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("predicted score")
    ax.set_ylabel("mean label")
    ax.set_title(
        f"{title}\nMAE {stat(quality.mae, '.3f')}, within 0.1 {stat(quality.within, '.2f')}, "
        f"Spearman {stat(quality.spearman, '.3f')}"
    )
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    plt.close(fig)
    return Path(path)


def write_report(quality: RMQuality, out_dir: Path, *, title: str = "") -> list[Path]:
    """`report.json` (undefined statistics as null), `confusion.md` and `calibration.png` in `out_dir`
    (each written atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "report.json", quality.to_json(), indent=1)
    atomic_write_text(out_dir / "confusion.md", confusion_markdown(quality))
    written = [out_dir / "report.json", out_dir / "confusion.md"]
    written.append(plot_calibration(quality, out_dir / "calibration.png", title or "Thinking reward model"))
    return written
