"""`sophiavl train-rm RECIPE [overrides...] [--ray-address ADDR] [--resume auto|PATH|none]`.

Usage:
    sophiavl train-rm recipes/thinking-rm-quickstart.yaml
    sophiavl train-rm recipes/thinking-rm.yaml data.train_files=thinking156k@train --ray-address HEAD_IP:6379
    sophiavl merge runs/sophiavl/thinking_rm/checkpoints/global_step_N --output thinking-rm
"""

from __future__ import annotations

from pathlib import Path

import typer

from sophiavl_cli.cli.train import check_resume_arg, launch, show_result
from sophiavl_cli.console import console

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
        "auto",
        "--resume",
        help="auto: latest complete checkpoint of the run dir; a checkpoint path; none: start over "
        "(an earlier run in the run dir is kept, moved aside).",
    ),
) -> None:
    """Fine-tune a vision-language model into the thinking reward model (SFT on Ray + FSDP2)."""
    from sophiavl_cli.config import load_recipe
    from sophiavl_cli.config.rm_recipe import RMRecipe
    from sophiavl_cli.engine.lifecycle.run_folder import run_dir_of
    from sophiavl_cli.engine.reward_model.driver import EVAL_DIRNAME
    from sophiavl_cli.engine.reward_model.driver import train_rm as run_training

    loaded = load_recipe(recipe, overrides or [], model=RMRecipe)
    check_resume_arg(resume)
    t = loaded.trainer
    console.print(
        f"[bold]sophiavl train-rm[/] {recipe}: {loaded.model.model_path}, {t.nnodes} x {t.n_workers_per_node} "
        f"workers, {loaded.data.batch_size} rows per step -> {run_dir_of(t)}",
        soft_wrap=True,
    )
    result = launch(run_training, loaded, ray_address, resume)
    if result is None:
        return
    report = result.run_dir / EVAL_DIRNAME
    notes = (f"held-out report: {report}",) if (report / "report.json").is_file() else ()
    show_result(result, notes, resume=resume)
