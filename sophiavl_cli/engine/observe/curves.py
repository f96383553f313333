"""PNG training curves from a run's `metrics.jsonl`: rewards, trust gamma, KL, response length.

Written at the end of `sophiavl train` into `<run_dir>/curves/` (and by hand:
`python -m sophiavl_cli.engine.observe.curves runs/sophiavl/trust_grpo/metrics.jsonl`). One PNG per panel
plus `overview.png` with every panel; a panel whose keys never appear is skipped, so a GRPO run
without thinking rewards simply has no gamma plot. Noisy series (more than 20 points) are drawn
faint with an exponential moving average on top. matplotlib runs on the Agg backend (no display).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from sophiavl_cli.console import err_console
from sophiavl_cli.errors import MissingExtraError
from sophiavl_cli.fileio import atomic_path, read_jsonl
from sophiavl_cli.metrics.keys import (
    ACTOR_KL,
    RESPONSE_LENGTH_MAX,
    RESPONSE_LENGTH_MEAN,
    REWARD_FINAL,
    REWARD_OUTCOME,
    REWARD_THINKING,
    SFT_LOSS,
    SFT_TOKEN_ACCURACY,
    TRUST_GAMMA,
    TRUST_WEIGHT,
    VAL_OUTCOME,
    VAL_RM_MAE,
    VAL_RM_SPEARMAN,
    VAL_RM_WITHIN,
)
from sophiavl_cli.metrics.registry import metric
from sophiavl_cli.optional import require


@dataclass(frozen=True)
class Panel:
    filename: str
    title: str
    keys: tuple[str, ...]


PANELS: tuple[Panel, ...] = (
    Panel("reward.png", "Rewards", (REWARD_OUTCOME, REWARD_THINKING, REWARD_FINAL, VAL_OUTCOME)),
    Panel("trust.png", "Trust-GRPO: gamma and thinking-reward weight", (TRUST_GAMMA, TRUST_WEIGHT)),
    Panel("kl.png", "KL to the reference policy", (ACTOR_KL,)),
    Panel("response_length.png", "Response length", (RESPONSE_LENGTH_MEAN, RESPONSE_LENGTH_MAX)),
    Panel("sft_loss.png", "Reward-model SFT: target-token loss", (SFT_LOSS,)),
    Panel("sft_accuracy.png", "Reward-model SFT: target-token accuracy", (SFT_TOKEN_ACCURACY,)),
    Panel("rm_eval.png", "Reward model on held-out rows", (VAL_RM_SPEARMAN, VAL_RM_WITHIN, VAL_RM_MAE)),
)
SMOOTH_AFTER = 20


def read_series(metrics_jsonl: Path) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values), skipping nulls; a later line for the same step replaces an earlier one."""
    by_step = {int(entry["step"]): entry for entry in read_jsonl(metrics_jsonl)}
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step in sorted(by_step):
        for key, value in by_step[step].items():
            if key != "step" and isinstance(value, (int, float)):
                steps, values = series.setdefault(key, ([], []))
                steps.append(step)
                values.append(float(value))
    return series


def ema(values: list[float], span: int = 10) -> list[float]:
    alpha = 2.0 / (span + 1)
    out: list[float] = []
    for value in values:
        out.append(value if not out else alpha * value + (1 - alpha) * out[-1])
    return out


def plot_curves(metrics_jsonl: Path, out_dir: Path) -> list[Path]:
    """Write one PNG per panel with data, plus `overview.png`; returns the paths written.

    Without matplotlib (the `curves` extra) nothing is drawn: one line says so, metrics.jsonl holds
    the same numbers.
    """
    try:
        matplotlib = require("matplotlib", "the training curves (PNG)")
    except MissingExtraError as exc:
        err_console.print(f"[yellow]curves skipped:[/] {escape(str(exc))}", soft_wrap=True)
        return []
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    series = read_series(metrics_jsonl)
    panels = [p for p in PANELS if any(k in series for k in p.keys)]
    if not panels:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for panel in panels:
        fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
        _draw(ax, panel, series)
        written.append(_save(fig, out_dir / panel.filename))
        plt.close(fig)
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 4.0 * rows), dpi=100, squeeze=False)
    for ax, panel in zip(axes.flat, panels, strict=False):
        _draw(ax, panel, series)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    written.append(_save(fig, out_dir / "overview.png"))
    plt.close(fig)
    return written


def _draw(ax: Any, panel: Panel, series: dict[str, tuple[list[int], list[float]]]) -> None:
    from matplotlib.ticker import MaxNLocator

    units = []
    for index, key in enumerate(k for k in panel.keys if k in series):
        steps, values = series[key]
        color = f"C{index}"
        if len(values) > SMOOTH_AFTER:
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(steps, ema(values), color=color, linewidth=2, label=f"{key} (EMA)")
        else:
            ax.plot(
                steps, values, color=color, linewidth=2, marker="o" if len(values) < 12 else None, label=key
            )
        units.append(metric(key).unit)
    ax.set_title(panel.title)
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole numbers: no 1.5 tick on 2 steps
    if units and len(set(units)) == 1 and units[0]:
        ax.set_ylabel(units[0])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp)
    return path


if __name__ == "__main__":
    source = Path(sys.argv[1])
    for written_path in plot_curves(
        source, Path(sys.argv[2]) if len(sys.argv) > 2 else source.parent / "curves"
    ):
        print(written_path)
