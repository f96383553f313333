"""The step loop both trainers run (`train`'s `fit`, `train-rm`'s `fit_rm`): steps, then validation
and checkpoint saving as the timed phases `val` and `save`, logging, and Ctrl-C / SIGTERM.

Each trainer says what one step, one validation and one save are (`Loop`); the loop owns when they
happen. A stop request ends the loop after the step in flight, with no validation; whenever the
signal lands (in the step, its validation, its save or while it is logged) the last finished
step is on disk before `run_steps` returns.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_cli.config.recipe import TrainerConfig
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.lifecycle.run_folder import opened_run
from sophiavl_cli.engine.lifecycle.signals import StopFlag
from sophiavl_cli.engine.observe.timing import StepTimer


@dataclass(kw_only=True)
class RunBase:
    """What both trainers' runs hold once built (`driver.Run`, `reward_model.driver.RMRun`)."""

    run_dir: Path
    model_dir: Path
    loader: Any
    val_rows: list[Any]
    loggers: Any
    manager: CheckpointManager
    total_steps: int
    start_step: int
    recipe_yaml: str  # the resolved recipe, also saved with every checkpoint
    say: Any


@dataclass
class RunResult:
    """What `sophiavl train` and `train-rm` print at the end."""

    run_dir: Path
    first_step: int
    last_step: int
    total_steps: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted: bool = False
    stop_signal: int | None = None  # SIGINT or SIGTERM when `interrupted`
    seconds: float = 0.0


@dataclass
class Loop:
    """One trainer's parts of the loop."""

    trainer: TrainerConfig
    loggers: Any
    run_dir: Path
    start_step: int
    total_steps: int
    step: Callable[[int], dict[str, float]]  # one step's metrics, its phase timings included
    save: Callable[[int], Path]  # a checkpoint of the step just finished
    validate: Callable[[int], dict[str, float]] | None = None  # None: no held-out data


def run_steps(loop: Loop, stop: StopFlag, stack: ExitStack) -> RunResult:
    """Run this invocation's steps; the loggers are stopped and closed when it returns."""
    trainer, loggers, validate = loop.trainer, loop.loggers, loop.validate
    result = RunResult(loop.run_dir, loop.start_step + 1, loop.start_step, loop.total_steps)
    if trainer.val_before_train and validate is not None and loop.start_step == 0:
        loggers.log(0, validate(0))
    after = StepTimer()  # validation and saving, after the step
    last_step = last_step_of_this_run(trainer, loop.start_step, loop.total_steps)
    stack.enter_context(loggers.progress(loop.total_steps, loop.start_step))
    saved_step = loop.start_step
    for step in range(loop.start_step + 1, last_step + 1):
        if stop.requested:  # asked to stop during setup, validation or logging: no new step
            break
        metrics = loop.step(step)
        stop.step_done()
        after.reset()
        stopping = stop.requested  # read once; a signal from here on is seen after the loop
        validating = (
            loop.validate is not None
            and trainer.val_freq > 0
            and due(step, trainer.val_freq, loop.total_steps)
        )
        if validating and not stopping:  # stopping: straight to the save, no validation
            with after("val"):
                metrics |= loop.validate(step)  # type: ignore[misc]
        if stopping or step == last_step or due(step, trainer.save_freq, loop.total_steps):
            with after("save"):
                result.checkpoint = loop.save(step)
            saved_step = step
        metrics |= after.phases()
        loggers.log(step, metrics)
        result.last_step, result.last_metrics = step, metrics
        if stopping:
            break
    if stop.requested:  # whenever the signal came, the last finished step is on disk before we exit
        result.interrupted, result.stop_signal = True, stop.signum
        if saved_step < result.last_step:
            stop.step_done()
            result.checkpoint = loop.save(result.last_step)
    loggers.stop()
    loggers.close()
    return result


def due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action runs after `step`: every `every` steps, and always at the end."""
    return step == total or (every > 0 and step % every == 0)


def last_step_of_this_run(trainer: TrainerConfig, start_step: int, total_steps: int) -> int:
    """The step this invocation ends after: the run's last, or earlier with `trainer.stop_after_steps`.

    Stopping early changes nothing but where the loop ends (the end-of-loop save writes the
    checkpoint): the LR and annealing schedules still span `total_steps`, so a run cut into
    pieces and resumed is the same run.
    """
    stop_after = trainer.stop_after_steps
    return total_steps if stop_after is None else min(total_steps, start_step + stop_after)


def run_trainer(
    recipe: Any,
    *,
    checks: Callable[..., Any],
    build: Callable[..., RunBase],
    fit: Callable[[Any, ExitStack, StopFlag], RunResult],
    ray_address: str | None,
    resume: str,
    status: Any,
) -> RunResult:
    """Both trainers' life: every pre-flight check, the run folder (lock, resume, stop flag), build,
    the step loop; `status(text)` reports progress."""
    say = status or (lambda text: None)
    started_at = time.perf_counter()
    checks(recipe, ray_address=ray_address)
    with opened_run(recipe, resume, say) as (stack, checkpoint, stop):
        run = build(recipe, stack, ray_address=ray_address, checkpoint=checkpoint, say=say)
        stop.ready()  # the first step may begin: a signal now lets it finish and save
        result = fit(run, stack, stop)
    result.seconds = time.perf_counter() - started_at
    return result
