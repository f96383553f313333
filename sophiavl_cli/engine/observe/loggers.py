"""Where a run's metrics go: console, JSONL (always), TensorBoard, W&B, SwanLab.

Only the driver logs; other processes use `NullLogger` (same methods, no output) instead of rank
checks. The driver builds one `MultiLogger` from `trainer.logger` and calls, per step:

    loggers = build_loggers(recipe, run_dir)
    with loggers.progress(total_steps, start_step):      # rich bar over steps (console backend)
        for step in range(start_step + 1, total_steps + 1):
            loggers.log_generations(step, samples)        # optional: decoded validation samples
            loggers.log(step, metrics)                    # {metric key: float}, keys from metrics/keys.py
    loggers.close()

Files in the run dir: `metrics.jsonl` (one object per step: `{"step": N, key: value, ...}`, flushed
per line; NaN/inf are written as null so every line is strict JSON) and `generations.jsonl` (one
object per sample, with its `step`). TensorBoard writes `tensorboard/`, W&B `wandb/`, SwanLab
`swanlog/`; W&B and SwanLab read their usual mode variables (`WANDB_MODE=offline|disabled`,
`SWANLAB_MODE=offline|local|disabled`).

Resume: lines from an abandoned future are dropped so the log reads like an uninterrupted run.
The cut is `resume_step` when given (entries with step > resume_step go), else the first step this
session logs (entries with step >= it go); TensorBoard gets the same cut as `purge_step`.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.console import console as default_console
from sophiavl_cli.fileio import JsonlAppender, atomic_write_jsonl, atomic_write_text, read_jsonl
from sophiavl_cli.metrics.keys import (
    ACTOR_ENTROPY,
    ACTOR_GRAD_NORM,
    ACTOR_PG_LOSS,
    REWARD_THINKING,
    SUMMARY_KEYS,
    TRUST_GAMMA,
    TRUST_THINKING_COVERAGE,
)
from sophiavl_cli.optional import require

METRICS_FILE = "metrics.jsonl"
GENERATIONS_FILE = "generations.jsonl"


class Backend(Protocol):
    def log(self, step: int, metrics: dict[str, float]) -> None: ...

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None: ...

    def close(self) -> None: ...


def clean_metrics(metrics: dict[str, Any]) -> dict[str, float | None]:
    """Plain floats (numpy / torch scalars accepted); NaN and inf become None (JSON null)."""
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        number = float(value)
        out[key] = number if math.isfinite(number) else None
    return out


# --------------------------------------------------------------------------- JSONL (always on)


class JsonlBackend:
    """`metrics.jsonl` and `generations.jsonl`, appended line by line, cut on resume."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._handles: dict[str, Any] = {}
        self._keep_below = None if resume_step is None else resume_step + 1
        if self._keep_below is not None:
            self._cut_files(self._keep_below)

    def _handle(self, name: str, step: int) -> Any:
        if self._keep_below is None:  # first event of this session decides the cut
            self._keep_below = step
            self._cut_files(step)
        if name not in self._handles:
            self._handles[name] = JsonlAppender(self.run_dir / name)
        return self._handles[name]

    def _cut_files(self, keep_below: int) -> None:
        for name in (METRICS_FILE, GENERATIONS_FILE):
            truncate_jsonl(self.run_dir / name, keep_below)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._handle(METRICS_FILE, step).write({"step": step, **clean_metrics(metrics)})

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        self._handle(GENERATIONS_FILE, step).write(*({"step": step, **row} for row in rows))

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()


def truncate_jsonl(path: Path, keep_below: int) -> int:
    """Keep only lines whose `step` is < keep_below (and drop a torn last line); returns lines kept."""
    if not path.is_file():
        return 0
    kept = [record for record in read_jsonl(path) if int(record["step"]) < keep_below]
    atomic_write_jsonl(path, kept)
    return len(kept)


# --------------------------------------------------------------------------- console


class ConsoleBackend:
    """A rich progress bar over steps and, every `log_freq` steps, a one-row table of key metrics."""

    def __init__(self, log_freq: int, console: Any = None) -> None:
        self.log_freq = log_freq
        self.console = console or default_console
        self._progress: Progress | None = None
        self._task: Any = None
        self._total = 0

    def start(self, total_steps: int, start_step: int = 0) -> None:
        self.stop()
        self._total = total_steps
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
        )
        self._task = self._progress.add_task("training", total=total_steps, completed=start_step)
        self._progress.start()

    def note(self, text: str | None) -> None:
        """What the step is waiting on, shown on the progress line (None: plain `training` again)."""
        if self._progress is not None:
            self._progress.update(self._task, description=f"training: {text}" if text else "training")

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=step)
        if step % self.log_freq == 0 or step == self._total:
            table = metrics_table(step, self._total, metrics, width=self.console.width)
            if table is not None:
                self.console.print(table)

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        return None  # samples go to generations.jsonl; the terminal stays readable

    def close(self) -> None:
        self.stop()


# When the terminal is too narrow for every column, these are left out, in this order; they stay in
# metrics.jsonl and the trackers.
CONSOLE_DROP_ORDER = (
    ACTOR_GRAD_NORM,
    ACTOR_ENTROPY,
    ACTOR_PG_LOSS,
    TRUST_GAMMA,
    REWARD_THINKING,
    TRUST_THINKING_COVERAGE,
)


def metrics_table(step: int, total: int, metrics: dict[str, float], width: int | None = None) -> Table | None:
    """The compact table: one row, a column per key metric present (header = the key's last part).

    With `width` (the terminal's), columns are dropped in `CONSOLE_DROP_ORDER` until the row fits,
    so an 80-column terminal gets one readable header line and one value line per step, not wrapped
    cells.
    """
    keys = [k for k in SUMMARY_KEYS if k in metrics]
    if not keys:
        return None
    first = f"{step}/{total}" if total else str(step)
    cells = {k: _format(metrics[k]) for k in keys}
    droppable = [k for k in CONSOLE_DROP_ORDER if k in keys]
    droppable += [
        k for k in reversed(keys[1:-1]) if k not in droppable
    ]  # then right to left, first and last kept

    def row_width() -> int:
        widths = [max(len("step"), len(first))]
        widths += [max(len(SUMMARY_KEYS[k]), len(Text.from_markup(cells[k]).plain)) for k in keys]
        return sum(widths) + 2 * len(widths)  # one space of padding either side

    while width is not None and droppable and row_width() > width:
        keys.remove(droppable.pop(0))
    table = Table(box=None, padding=(0, 1), show_edge=False, header_style="bold cyan")
    table.add_column("step", justify="right", no_wrap=True)
    for key in keys:
        table.add_column(SUMMARY_KEYS[key], justify="right", no_wrap=True)
    table.add_row(first, *(cells[k] for k in keys))
    return table


def _format(value: float | None) -> str:
    if value is None or not math.isfinite(float(value)):
        return "[red]nan[/]"
    value = float(value)
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


# --------------------------------------------------------------------------- optional trackers


class TensorBoardBackend:
    """`run_dir/tensorboard/`; opened at the first event so resume can purge later steps."""

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        require("tensorboard", "trainer.logger: tensorboard")
        self.log_dir = Path(run_dir) / "tensorboard"
        self._purge_step = None if resume_step is None else resume_step + 1
        self._writer: Any = None

    def _open(self, step: int) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=self._purge_step or step)
        return self._writer

    def log(self, step: int, metrics: dict[str, float]) -> None:
        writer = self._open(step)
        for key, value in metrics.items():
            writer.add_scalar(key, float(value), step)
        writer.flush()

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        text = "\n\n".join(
            f"```\n{json.dumps(r, ensure_ascii=False, default=str, indent=1)}\n```" for r in rows
        )
        self._open(step).add_text("generations", text, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class WandbBackend:
    """Weights & Biases; the run id is kept in `run_dir/wandb_run_id` so a resumed run continues it."""

    def __init__(self, recipe: Recipe, run_dir: Path) -> None:
        wandb = require("wandb", "trainer.logger: wandb")
        id_file = Path(run_dir) / "wandb_run_id"
        # W&B run ids are [a-z0-9]; kept in the run dir so a resumed run continues the same W&B run.
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        atomic_write_text(id_file, run_id + "\n")
        self._wandb = wandb
        self.run = wandb.init(
            project=recipe.trainer.project_name,
            name=recipe.trainer.experiment_name,
            dir=str(run_dir),
            config=recipe.model_dump(mode="json"),
            id=run_id,
            resume="allow",
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log(dict(metrics), step=step)

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        if rows:
            columns = list(dict.fromkeys(k for row in rows for k in row))
            data = [[_plain(row.get(c)) for c in columns] for row in rows]
            self.run.log({"generations": self._wandb.Table(columns=columns, data=data)}, step=step)

    def close(self) -> None:
        self.run.finish()


class SwanLabBackend:
    """SwanLab, logging into `run_dir/swanlog/` (mode from SWANLAB_MODE or swanlab's own setting)."""

    def __init__(self, recipe: Recipe, run_dir: Path) -> None:
        swanlab = require("swanlab", "trainer.logger: swanlab")
        logdir = Path(run_dir) / "swanlog"
        logdir.mkdir(parents=True, exist_ok=True)
        self._swanlab = swanlab
        self.run = swanlab.init(
            project=recipe.trainer.project_name,
            experiment_name=recipe.trainer.experiment_name,
            config=recipe.model_dump(mode="json"),
            logdir=str(logdir),
        )

    def log(self, step: int, metrics: dict[str, float]) -> None:
        self._swanlab.log(dict(metrics), step=step)

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        texts = [self._swanlab.Text(json.dumps(r, ensure_ascii=False, default=str)) for r in rows]
        if texts:
            self._swanlab.log({"generations": texts}, step=step)

    def close(self) -> None:
        self._swanlab.finish()


def _plain(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


# --------------------------------------------------------------------------- fan-out


class MultiLogger:
    """Sends every call to each backend; `progress(...)` drives the console bar when there is one."""

    def __init__(self, backends: list[Backend]) -> None:
        self.backends = backends
        self._closed = False

    @property
    def console(self) -> ConsoleBackend | None:
        return next((b for b in self.backends if isinstance(b, ConsoleBackend)), None)

    def start(self, total_steps: int, start_step: int = 0) -> None:
        """Show the progress bar (steps done = start_step on resume); `log(step, ...)` moves it."""
        if self.console is not None:
            self.console.start(total_steps, start_step)

    def stop(self) -> None:
        if self.console is not None:
            self.console.stop()

    def note(self, text: str | None) -> None:
        """What the step is waiting on, on the progress line (`ConsoleBackend.note`)."""
        if self.console is not None:
            self.console.note(text)

    @contextmanager
    def progress(self, total_steps: int, start_step: int = 0) -> Iterator[MultiLogger]:
        self.start(total_steps, start_step)
        try:
            yield self
        finally:
            self.stop()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        for backend in self.backends:
            backend.log(step, metrics)

    def log_generations(self, step: int, rows: list[dict[str, Any]]) -> None:
        for backend in self.backends:
            backend.log_generations(step, rows)

    def close(self) -> None:
        """Flush and close every backend; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for backend in self.backends:
            backend.close()


class NullLogger(MultiLogger):
    """For processes that must not log (non-driver ranks): every call does nothing."""

    def __init__(self) -> None:
        super().__init__([])


def build_loggers(
    recipe: Recipe, run_dir: Path, resume_step: int | None = None, console: Any = None
) -> MultiLogger:
    """The backends `trainer.logger` names, plus JSONL, which is always on.

    `resume_step`: the checkpoint step a resumed run starts from (0 for a fresh run); entries after
    it are dropped from the run dir's logs. None: cut at the first step this session logs.
    """
    names = list(dict.fromkeys(recipe.trainer.logger))
    backends: list[Backend] = [JsonlBackend(run_dir, resume_step)]
    for name in names:
        if name == "console":
            backends.append(ConsoleBackend(recipe.trainer.log_freq, console))
        elif name == "tensorboard":
            backends.append(TensorBoardBackend(run_dir, resume_step))
        elif name == "wandb":
            backends.append(WandbBackend(recipe, run_dir))
        elif name == "swanlab":
            backends.append(SwanLabBackend(recipe, run_dir))
    return MultiLogger(backends)
