"""Everything that can be known to fail before Ray starts, checked at once and reported together.

A recipe that cannot run here used to reveal its problems one per try (vLLM missing, then the model
not cached, then the data not registered) and then spend a minute in Ray's autoscaler before saying
it cannot place GPU workers. `preflight` runs every check in about a second and raises one
`UserError` listing them all, each with what to change. `finished_run` is the other question to
answer before starting anything: whether the run folder's last checkpoint already ends the run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from sophiavl_cli.config.recipe import Recipe, TrainerConfig
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.errors import UserError

Check = Callable[[], None]


def preflight(recipe: Recipe, *, ray_address: str | None, env: dict[str, str] | None = None) -> None:
    """Raise one `UserError` naming every start-up problem of `recipe` on this machine (none: return)."""
    env = dict(os.environ) if env is None else env
    checks: list[Check] = [
        lambda: _rollout_backend(recipe),
        lambda: _model(recipe.worker.actor.model_path, "worker.actor.model_path"),
    ]
    thinking = recipe.reward.thinking
    if recipe.algorithm.trust.enable and not (thinking.url or env.get("OPENAI_API_URL")):
        if thinking.serve is not None:  # a Ray actor of the run serves it (engine/reward_model/served.py)
            served = thinking.serve.model
            checks.append(lambda: _model(served, "reward.thinking.serve.model"))
        else:
            checks.append(lambda: _reward_model(thinking.serve_model))
    _run_all(checks + _shared_checks(recipe, ray_address))


def preflight_rm(recipe: RMRecipe, *, ray_address: str | None) -> None:
    """`preflight` for `sophiavl train-rm`: the model to fine-tune, data, devices, output folder."""
    model = recipe.model.model_path
    _run_all([lambda: _model(model, "model.model_path"), *_shared_checks(recipe, ray_address)])


def _shared_checks(recipe: Recipe | RMRecipe, ray_address: str | None) -> list[Check]:
    """What both trainers need: data names that resolve, the devices asked for, a writable output."""
    data, trainer = recipe.data, recipe.trainer
    checks: list[Check] = [lambda: _data(data.train_files, data.registry, "data.train_files")]
    val_files = data.val_files
    if val_files and (trainer.val_freq > 0 or trainer.val_before_train):
        checks.append(lambda: _data(val_files, data.registry, "data.val_files"))
    return [
        *checks,
        lambda: _devices(trainer, ray_address),
        lambda: _output_writable(Path(trainer.output_dir)),
    ]


def _run_all(checks: list[Check]) -> None:
    """Run every check, then raise one `UserError` with all their problems (one problem: one line)."""
    problems: list[str] = []
    for check in checks:
        try:
            check()
        except UserError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise UserError(f"cannot start training: {problems[0]}")
    if problems:
        raise UserError(
            f"cannot start training ({len(problems)} problems):\n" + "\n".join(f"- {p}" for p in problems)
        )


def _rollout_backend(recipe: Recipe) -> None:
    from sophiavl_cli.engine.rollout import check_backend

    check_backend(recipe.worker.rollout)


def _model(ref: str, key: str) -> None:
    from sophiavl_cli.models.resolve import resolve_model

    try:
        resolve_model(ref)
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None


def _reward_model(serve_model: str | None) -> None:
    """The model a built-in reward server would load; naming none (and no endpoint) is a problem."""
    if not serve_model:
        from sophiavl_cli.engine.reward_model.service import NO_ENDPOINT

        raise UserError(NO_ENDPOINT)
    _model(serve_model, "reward.thinking.serve_model")


def _data(spec: str, registry_file: str | None, key: str) -> None:
    from sophiavl_cli.data.registry import registry_path
    from sophiavl_cli.data.sources import parse_spec, resolve_entry

    registry = registry_path(Path(registry_file) if registry_file else None)
    missing = []
    for name, _ in parse_spec(spec):
        try:
            resolve_entry(name, registry)
        except UserError as exc:
            missing.append(str(exc))
    if missing:
        raise UserError(f"{key}: " + "; ".join(missing))


def _devices(t: TrainerConfig, ray_address: str | None) -> None:
    """GPU count and node count this machine can give, unless a cluster is joined (it may have more)."""
    if ray_address:
        return
    if t.nnodes > 1:
        raise UserError(
            f"trainer.nnodes={t.nnodes} needs a Ray cluster of {t.nnodes} nodes: start one (`ray start --head` on the "
            "head, `ray start --address HEAD:6379` on the others) and pass --ray-address, or set trainer.nnodes=1"
        )
    if t.device != "cuda":
        return
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= t.n_workers_per_node:
        return
    have = "this machine has no GPU" if gpus == 0 else f"this machine has {gpus} GPU{'s' if gpus > 1 else ''}"
    fix = (
        "set trainer.device=cpu (slow; for trying things out) or run on a GPU machine"
        if gpus == 0
        else f"set trainer.n_workers_per_node={gpus} (and batch sizes that divide) or run on a bigger machine"
    )
    raise UserError(f"{have}: trainer.device=cuda needs {t.n_workers_per_node}; {fix}, or pass --ray-address")


def _output_writable(output_dir: Path) -> None:
    try:
        check_writable(output_dir)
    except UserError:
        raise UserError(f"trainer.output_dir={output_dir}: not a writable folder; pick another") from None


def check_writable(output: Path) -> None:
    """Fail before any heavy work when `output` (or the folder it would be created in) cannot be written."""
    existing = Path(output).absolute()
    while not existing.exists():
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(existing)
        with tempfile.TemporaryFile(dir=existing):  # a real write: permissions, read-only mounts, quotas
            pass
    except OSError:
        raise UserError(
            f"{output}: cannot write here ({existing} is not a writable folder); pass another --output"
        ) from None


def finished_run(recipe: Recipe | RMRecipe, run_dir: Path, checkpoint: Path | None) -> str | None:
    """The message to stop with when `checkpoint` already ends the run this recipe asks for, else None.

    The run is over when the checkpoint's step reached its total and the recipe asks for no more:
    `trainer.max_steps` unset or not above that step, and `trainer.total_epochs` not raised.
    """
    if checkpoint is None:
        return None
    from sophiavl_cli.config.loading import load_recipe
    from sophiavl_cli.engine.checkpoint.layout import RECIPE_FILE
    from sophiavl_cli.engine.checkpoint.store import CheckpointManager

    state = CheckpointManager.load_driver_state(checkpoint)
    step, total = int(state.get("step", 0)), state.get("total_steps")
    if total is None or step < int(total):
        return None
    max_steps = recipe.trainer.max_steps
    if max_steps is not None and max_steps > step:
        return None
    saved_recipe = checkpoint / RECIPE_FILE
    if saved_recipe.is_file():
        try:
            saved_epochs = load_recipe(saved_recipe, model=type(recipe)).trainer.total_epochs
        except UserError:
            saved_epochs = None
        if saved_epochs is not None and recipe.trainer.total_epochs > saved_epochs and max_steps is None:
            return None
    return (
        f"already finished (step {step} of {total}): run dir {run_dir}; pass trainer.max_steps={int(total) * 2} "
        "(or any number above the last step) to go on, or --resume none to start over"
    )
