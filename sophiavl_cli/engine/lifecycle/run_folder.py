"""What a trainer holds on its run folder while it runs (`train` and `train-rm` alike).

The folder's lock (one trainer per folder), the checkpoint to resume, whether the run is already
over (exit 0, nothing started), an earlier run moved aside when this one starts over
(`fresh_start.py`), a reaper so nothing outlives the trainer, the Ctrl-C / SIGTERM
flag, and the check that a resume rebuilds the network the checkpoint was trained on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sophiavl_cli.config.recipe import Recipe, TrainerConfig
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.engine.checkpoint.layout import HF_DIRNAME
from sophiavl_cli.engine.checkpoint.store import resolve_resume
from sophiavl_cli.engine.lifecycle.disk import disk_full_said, reclaim_stale_saves
from sophiavl_cli.engine.lifecycle.fresh_start import set_aside
from sophiavl_cli.engine.lifecycle.preflight import finished_run
from sophiavl_cli.engine.lifecycle.reaper import start_reaper
from sophiavl_cli.engine.lifecycle.runlock import RunLock
from sophiavl_cli.engine.lifecycle.signals import StopFlag
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.config_diff import config_differences


def run_dir_of(trainer: TrainerConfig) -> Path:
    """`output_dir/project_name/experiment_name`: the one folder a run writes (and resumes from)."""
    return Path(trainer.output_dir) / trainer.project_name / trainer.experiment_name


class AlreadyFinished(UserError):
    """The run folder's last checkpoint already ends the run the recipe asks for (exit 0: nothing to do)."""

    exit_code = 0


@contextmanager
def opened_run(
    recipe: Recipe | RMRecipe, resume: str, say: Any
) -> Iterator[tuple[ExitStack, Path | None, StopFlag]]:
    """What both trainers hold while they run: the run folder's lock, the checkpoint to resume
    (None: fresh), a reaper for every process they start and the Ctrl-C / SIGTERM flag; teardown
    goes on the stack. Raises `AlreadyFinished` before anything starts when the run is over."""
    run_dir = run_dir_of(recipe.trainer)
    with ExitStack() as stack:
        lock = RunLock(run_dir).acquire()
        stack.callback(lambda: lock.release())  # the lock held at the end, which set_aside may replace
        checkpoint = resolve_resume(resume, run_dir, say)
        finished = finished_run(recipe, run_dir, checkpoint)
        if finished is not None:
            raise AlreadyFinished(finished)
        if checkpoint is None:  # a fresh start: an earlier run in the folder is kept, never mixed in
            aside, lock = set_aside(run_dir, lock)
            if aside is not None:
                say(f"starting over: the earlier run in {run_dir} is kept, moved to {aside}")
        reclaim_stale_saves(run_dir, say)  # before anything else needs the space
        stack.callback(start_reaper().stop)  # first in, last out: after Ray and the RM are stopped
        stop = stack.enter_context(StopFlag(recipe.trainer.stop_grace_s, starting=True))
        with disk_full_said(run_dir, lambda: _checkpoint_estimate(recipe)):
            yield stack, checkpoint, stop


def _checkpoint_estimate(recipe: Recipe | RMRecipe) -> int:
    """One checkpoint of this recipe's model, estimated from its weights (for a full-disk message)."""
    from sophiavl_cli.engine.lifecycle.machine_checks import recipe_checkpoint_bytes
    from sophiavl_cli.models.resolve import resolve_model

    path = recipe.model.model_path if isinstance(recipe, RMRecipe) else recipe.worker.actor.model_path
    return recipe_checkpoint_bytes(recipe, resolve_model(path))


def check_resumed_model(model_dir: Path, checkpoint: Path, key: str) -> None:
    """A resume rebuilds the network from `key`'s folder (and, with LoRA, takes its base weights from
    there): it must be the model the checkpoint was trained on."""
    trained = checkpoint / HF_DIRNAME
    if not (trained / "config.json").is_file():  # nothing recorded to compare with
        return
    differ = config_differences(model_dir, trained)
    if differ:
        raise UserError(
            f"{key} ({model_dir}) is not the model {checkpoint} was trained on: config.json differs in {differ}; "
            f"set {key} to the run's model, or pass --resume none to start over"
        )
