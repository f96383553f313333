"""Everything that can be known to fail before Ray starts, checked at once and reported together.

A recipe that cannot run here used to reveal its problems one per try (vLLM missing, then the model
not cached, then the data not registered) and then spend a minute in Ray's autoscaler, or load the
7B policy on every rank, before saying what was missing. `preflight` runs every check in seconds
and raises one `UserError` listing them all, each with what to change; `findings` is the same list
with the checks that passed, for `sophiavl doctor RECIPE`'s table. The recipe's own checks (model,
data, output folder) live here; what the run needs from the machine (packages, credentials, GPUs,
driver, disk, shared memory) in `machine_checks.py`. `finished_run` is the other question to answer
before starting anything: whether the run folder's last checkpoint already ends the run.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.config.reward import ThinkingRewardConfig
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.engine.lifecycle import machine_checks as machine
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.loading import check_flash_attn

Check = Callable[[], None]
NamedCheck = tuple[str, Check]  # (what is checked, as a table row names it; the check)


@dataclass(frozen=True)
class Finding:
    """One check's outcome: `problem` is the one-line problem with its fix, None when the need is met."""

    check: str
    problem: str | None


def findings(
    recipe: Recipe | RMRecipe, *, ray_address: str | None, env: Mapping[str, str] | None = None
) -> list[Finding]:
    """Every start-up check of `recipe` on this machine, run in order, none skipped for an earlier failure."""
    env = dict(os.environ) if env is None else env
    checks = (
        _train_checks(recipe, ray_address, env)
        if isinstance(recipe, Recipe)
        else _rm_checks(recipe, ray_address, env)
    )
    return [run_check(name, check) for name, check in checks]


def preflight(recipe: Recipe, *, ray_address: str | None, env: Mapping[str, str] | None = None) -> None:
    """Raise one `UserError` naming every start-up problem of `recipe` on this machine (none: return)."""
    raise_problems(findings(recipe, ray_address=ray_address, env=env))


def preflight_rm(recipe: RMRecipe, *, ray_address: str | None, env: Mapping[str, str] | None = None) -> None:
    """`preflight` for `sophiavl train-rm`: the model to fine-tune, data, machine, output folder."""
    raise_problems(findings(recipe, ray_address=ray_address, env=env))


def _train_checks(recipe: Recipe, ray_address: str | None, env: Mapping[str, str]) -> list[NamedCheck]:
    model_dir = _ModelDir(recipe.worker.actor.model_path, "worker.actor.model_path")
    checks: list[NamedCheck] = [
        ("rollout backend", lambda: _rollout_backend(recipe)),
        ("model", model_dir.check),
        ("vLLM on CPU", lambda: _vllm_on_cpu(recipe)),
    ]
    thinking = recipe.reward.thinking
    if recipe.algorithm.trust.enable and not (thinking.url or env.get("OPENAI_API_URL")):
        if thinking.serve is not None:  # a Ray actor of the run serves it (engine/reward_model/served.py)
            serve = thinking.serve
            checks.append(("reward model", lambda: _model(serve.model, "reward.thinking.serve.model")))
            if serve.backend == "vllm":
                checks.append(
                    ("reward model vLLM", lambda: machine.check_vllm("reward.thinking.serve.backend=vllm"))
                )
        else:
            checks.append(("reward model", lambda: _reward_model(thinking.serve_model)))
    elif recipe.algorithm.trust.enable:
        checks.append(("reward model endpoint", lambda: reward_endpoint(thinking, env)))
    return checks + _shared_checks(recipe, ray_address, env, model_dir)


# The pre-flight's wait for a configured endpoint (the run's own is reward.thinking.timeout).
ENDPOINT_TIMEOUT_S = 10.0


def reward_endpoint(cfg: ThinkingRewardConfig, env: Mapping[str, str]) -> None:
    """A configured endpoint (`reward.thinking.url` > $OPENAI_API_URL) answers GET /models with the
    model, taking the key, within `ENDPOINT_TIMEOUT_S`: a closed port, a wrong key or a URL with
    `user:password@` fails here in one line (credentials never printed), not after Ray started."""
    from sophiavl_cli.rewards.thinking import ThinkingRewardClient

    quick = cfg.model_copy(update={"timeout": min(cfg.timeout, ENDPOINT_TIMEOUT_S)})
    client = ThinkingRewardClient.from_config(quick, env)
    try:
        client.health_check()
    finally:
        client.close()


def _rm_checks(recipe: RMRecipe, ray_address: str | None, env: Mapping[str, str]) -> list[NamedCheck]:
    model_dir = _ModelDir(recipe.model.model_path, "model.model_path")
    return [("model", model_dir.check), *_shared_checks(recipe, ray_address, env, model_dir)]


def _shared_checks(
    recipe: Recipe | RMRecipe, ray_address: str | None, env: Mapping[str, str], model_dir: _ModelDir
) -> list[NamedCheck]:
    """What both trainers need: data names that resolve, the machine's side, a writable output."""
    data, trainer = recipe.data, recipe.trainer
    checks: list[NamedCheck] = [
        ("training data", lambda: _data(data.train_files, data.registry, "data.train_files"))
    ]
    val_files = data.val_files
    if val_files and (trainer.val_freq > 0 or trainer.val_before_train):
        checks.append(("validation data", lambda: _data(val_files, data.registry, "data.val_files")))
    device = machine.run_device(trainer, ray_address)
    return [
        *checks,
        ("GPUs", lambda: machine.check_gpus(recipe, ray_address, env)),
        ("CUDA driver", lambda: machine.check_cuda_driver(device)),
        ("flash-attn", lambda: check_flash_attn(device)),
        ("loggers", lambda: machine.check_loggers(trainer, env)),
        ("output folder", lambda: _output_writable(Path(trainer.output_dir))),
        ("disk", lambda: machine.check_disk(recipe, model_dir.path)),
        ("/dev/shm", lambda: machine.check_shm(device, ray_address)),
    ]


class _ModelDir:
    """The model folder a recipe key names, resolved once by its check and read by the disk check."""

    def __init__(self, ref: str, key: str) -> None:
        self.ref, self.key = ref, key
        self.path: Path | None = None

    def check(self) -> None:
        self.path = _model(self.ref, self.key)


def run_check(name: str, check: Check) -> Finding:
    try:
        check()
    except UserError as exc:
        return Finding(name, str(exc))
    return Finding(name, None)


def raise_problems(results: list[Finding], what: str = "training") -> None:
    """One `UserError` with every problem of `results` (one problem: one line); none: return."""
    problems = [f.problem for f in results if f.problem]
    if len(problems) == 1:
        raise UserError(f"cannot start {what}: {problems[0]}")
    if problems:
        raise UserError(
            f"cannot start {what} ({len(problems)} problems):\n" + "\n".join(f"- {p}" for p in problems)
        )


def _rollout_backend(recipe: Recipe) -> None:
    from sophiavl_cli.engine.rollout import check_backend

    check_backend(recipe.worker.rollout)
    if recipe.worker.rollout.backend == "vllm":
        machine.check_vllm("worker.rollout.backend=vllm")


def _model(ref: str, key: str) -> Path:
    """The folder `ref` resolves to, of a family sophiavl trains and this transformers has."""
    from sophiavl_cli.models.loading import checked_family
    from sophiavl_cli.models.resolve import resolve_model

    try:
        folder = resolve_model(ref)
        checked_family(folder)
    except UserError as exc:
        raise UserError(f"{key}: {exc}") from None
    return folder


def _vllm_on_cpu(recipe: Recipe) -> None:
    """A family vLLM's CPU build cannot roll out, said before Ray (models.families.vllm_cpu_gap)."""
    from sophiavl_cli.models.families import vllm_cpu_gap
    from sophiavl_cli.models.loading import checked_family
    from sophiavl_cli.models.resolve import resolve_model

    if recipe.worker.rollout.backend != "vllm" or recipe.trainer.device != "cpu":
        return
    try:
        gap = vllm_cpu_gap(checked_family(resolve_model(recipe.worker.actor.model_path)))
    except UserError:
        return  # the model check reports an unusable model
    if gap is not None:
        raise UserError(f"worker.rollout.backend=vllm: {gap}")


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
        "(or any number above the last step) to go on, or --resume none to start over (this run is kept, "
        "moved aside)"
    )
