"""`sophiavl train-rm RECIPE [overrides...] [--ray-address ADDR] [--resume auto|PATH|none]`.

Usage:
    sophiavl train-rm recipes/thinking-rm-quickstart.yaml
    sophiavl train-rm recipes/thinking-rm.yaml data.train_files=thinking156k@train --ray-address HEAD_IP:6379
    sophiavl merge runs/sophiavl/thinking_rm/checkpoints/global_step_N --output thinking-rm
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from sophiavl_cli.cli.train import show_result
from sophiavl_cli.console import console, fail
from sophiavl_cli.errors import UserError

EPILOG = (
    "Examples: sophiavl train-rm recipes/thinking-rm-quickstart.yaml | sophiavl train-rm "
    "recipes/thinking-rm.yaml data.train_files=thinking156k@train | sophiavl train-rm RECIPE --resume none"
)


def train_rm(
    recipe: Path = typer.Argument(
        ..., help="Reward-model recipe YAML, e.g. recipes/thinking-rm-quickstart.yaml."
    ),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, e.g. trainer.max_steps=2."),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Join this Ray cluster (from `ray start --head`) instead of starting one."
    ),
    resume: str = typer.Option(
        "auto", "--resume", help="auto: latest complete checkpoint of the run dir; a checkpoint path; none."
    ),
) -> None:
    """Fine-tune a vision-language model into the thinking reward model (SFT on Ray + FSDP2)."""
    from sophiavl_cli.config import load_recipe
    from sophiavl_cli.config.rm_recipe import RMRecipe
    from sophiavl_cli.engine.cluster import WorkerFailure
    from sophiavl_cli.engine.rm_driver import EVAL_DIRNAME
    from sophiavl_cli.engine.rm_driver import train_rm as run_training
    from sophiavl_cli.engine.run_folder import AlreadyFinished, run_dir_of

    loaded = load_recipe(recipe, overrides or [], model=RMRecipe)
    if resume not in ("auto", "none") and not Path(resume).exists():
        raise UserError(f"--resume {resume}: no such path; pass auto, none or a checkpoint folder")
    t = loaded.trainer
    console.print(
        f"[bold]sophiavl train-rm[/] {recipe}: {loaded.model.model_path}, {t.nnodes} x {t.n_workers_per_node} "
        f"workers, {loaded.data.batch_size} rows per step -> {run_dir_of(t)}",
        soft_wrap=True,
    )
    try:
        result = run_training(
            loaded,
            ray_address=ray_address,
            resume=resume,
            status=lambda text: console.print(f"[dim]{text}[/]"),
        )
    except WorkerFailure as exc:
        fail(str(exc))
        sys.exit(1)
    except AlreadyFinished as exc:  # nothing to do is not an error: said plainly, exit 0
        console.print(str(exc), soft_wrap=True, markup=False)
        return
    report = result.run_dir / EVAL_DIRNAME
    notes = (f"held-out report: {report}",) if (report / "report.json").is_file() else ()
    show_result(result, notes)
