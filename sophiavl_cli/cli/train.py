"""`sophiavl train RECIPE [overrides...] [--ray-address ADDR] [--resume auto|PATH|none]`.

Usage:
    sophiavl train recipes/quickstart.yaml
    sophiavl train recipes/fullsets.yaml trainer.max_steps=20 worker.rollout.n=4
    sophiavl train recipes/fullsets.yaml --ray-address 10.0.0.1:6379      # a cluster from `ray start`
    sophiavl train recipes/quickstart.yaml --resume none                    # start over (the old run is kept)
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table

from sophiavl_cli.console import console, fail
from sophiavl_cli.errors import UserError
from sophiavl_cli.metrics.keys import SUMMARY_KEYS

if TYPE_CHECKING:
    from sophiavl_cli.engine.loop import RunResult

EPILOG = (
    "Examples: sophiavl train recipes/quickstart.yaml | sophiavl train recipes/fullsets.yaml "
    "trainer.max_steps=20 --ray-address HEAD_IP:6379 | sophiavl train RECIPE --resume none"
)


def train(
    recipe: Path = typer.Argument(..., help="Recipe YAML, e.g. recipes/quickstart.yaml."),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. trainer.max_steps=2."),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (from `ray start --head`) instead of starting one."
    ),
    resume: str = typer.Option(
        "auto",
        "--resume",
        help="auto: latest complete checkpoint of the run dir; a checkpoint path; none: start over "
        "(an earlier run in the run dir is kept, moved aside).",
    ),
) -> None:
    """Train a vision-language policy with Trust-GRPO on Ray + FSDP2."""
    from sophiavl_cli.config import load_recipe
    from sophiavl_cli.engine.driver import train as run_training
    from sophiavl_cli.engine.lifecycle.run_folder import run_dir_of

    loaded = load_recipe(recipe, overrides or [])  # batch sizes that do not divide fail here, before Ray
    check_resume_arg(resume)
    t = loaded.trainer
    console.print(
        f"[bold]sophiavl train[/] {recipe}: {loaded.worker.actor.model_path}, {t.nnodes} x "
        f"{t.n_workers_per_node} workers, {loaded.data.rollout_batch_size} prompts x {loaded.worker.rollout.n} "
        f"rollouts per step -> {run_dir_of(loaded.trainer)}",
        soft_wrap=True,
    )
    result = launch(run_training, loaded, ray_address, resume)
    if result is not None:
        show_result(result, resume=resume)


def check_resume_arg(resume: str) -> None:
    if resume not in ("auto", "none") and not Path(resume).exists():
        raise UserError(f"--resume {resume}: no such path; pass auto, none or a checkpoint folder")


def launch(
    trainer: Callable[..., RunResult], recipe: Any, ray_address: str | None, resume: str
) -> RunResult | None:
    """Run `trainer` (`train` or `train-rm`) with status lines on the console. A failed worker is one
    line and exit 1; a run that is already over is said plainly and gives None (exit 0); a signal that
    stops it (`Stopped`) is its line and 128 + the signal number."""
    from sophiavl_cli.engine.lifecycle.run_folder import AlreadyFinished
    from sophiavl_cli.engine.lifecycle.signals import StopFlag, Stopped
    from sophiavl_cli.engine.parallel.cluster import WorkerFailure

    try:
        with StopFlag(starting=True):  # a signal around the run's own flag: stop at once, with a line
            return trainer(
                recipe,
                ray_address=ray_address,
                resume=resume,
                status=lambda text: console.print(f"[dim]{escape(text)}[/]", soft_wrap=True),  # paths whole
            )
    except WorkerFailure as exc:
        fail(str(exc))
        sys.exit(1)
    except Stopped as exc:  # said here: typer turns any KeyboardInterrupt into a silent exit 130
        fail(exc.message)
        sys.exit(exc.exit_code)
    except AlreadyFinished as exc:  # nothing to do is not an error
        console.print(str(exc), soft_wrap=True, markup=False)
        return None


def continue_hint(resume: str) -> str:
    """How to go on from where a stopped run left off. Repeating `--resume none` (or a checkpoint
    path) would start over (or go back) instead, so the hint says to drop it."""
    if resume == "auto":
        return "continue: the same command again (--resume auto is the default)"
    return f"continue: the same command without --resume {resume} (--resume auto, the default, takes the newest checkpoint)"


def show_result(result: RunResult, notes: tuple[str, ...] = (), resume: str = "auto") -> None:
    """The closing table of a training run (`train` and `train-rm`), then exit 128 + signal if stopped."""
    finished = result.last_step >= result.total_steps and not result.interrupted
    table = Table(
        title=f"{'done' if finished else 'stopped'}: steps {result.first_step}-{result.last_step} "
        f"of {result.total_steps} in {result.seconds:.0f} s"
    )
    table.add_column("metric (last step)")
    table.add_column("value", justify="right", overflow="fold")  # a checkpoint path shown whole
    for key in SUMMARY_KEYS:
        if key in result.last_metrics:
            table.add_row(key, f"{result.last_metrics[key]:.4g}")
    table.add_row("checkpoint", str(result.checkpoint) if result.checkpoint else "-")
    console.print(table)
    console.print(f"run dir: [bold]{result.run_dir}[/]", soft_wrap=True)  # one line: copy-pasteable
    if finished:
        for note in notes:
            console.print(note, soft_wrap=True)
    else:
        console.print(continue_hint(resume), soft_wrap=True, markup=False)
    if result.interrupted:  # like any command stopped by a signal (130 Ctrl-C, 143 SIGTERM), checkpoint safe
        sys.exit(128 + (result.stop_signal or signal.SIGINT))
