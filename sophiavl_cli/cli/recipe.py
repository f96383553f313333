"""`sophiavl recipe validate|schema`: check a recipe before any process starts."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from sophiavl_cli.config import dump_recipe, load_recipe, recipe_schema
from sophiavl_cli.console import console

app = typer.Typer(help="Validate recipes and export their JSON Schema.", no_args_is_help=True)


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="Recipe YAML."),
    overrides: list[str] = typer.Argument(
        None, help="Dotted overrides, e.g. trainer.max_steps=2 worker.rollout.n=4."
    ),
    show: bool = typer.Option(False, "--show", help="Print the fully resolved recipe as YAML."),
) -> None:
    """Validate FILE with overrides; exit 2 with one line per problem."""
    recipe = load_recipe(file, overrides or [])
    if show:
        console.print(dump_recipe(recipe), markup=False)
        return
    table = Table(title=f"{file}: valid")
    table.add_column("key")
    table.add_column("value")
    a = recipe.worker.actor
    for key, value in [
        ("policy", a.model_path),
        ("train_files", recipe.data.train_files),
        ("prompts/step x n", f"{recipe.data.rollout_batch_size} x {recipe.worker.rollout.n}"),
        ("world size", recipe.world_size),
        ("rollout backend", recipe.worker.rollout.backend),
        ("trust mode", recipe.algorithm.trust.mode if recipe.algorithm.trust.enable else "off"),
        ("max steps", recipe.trainer.max_steps or f"{recipe.trainer.total_epochs} epoch(s)"),
    ]:
        table.add_row(key, str(value))
    console.print(table)


@app.command("schema")
def schema(
    output: Path = typer.Option(None, "--output", "-o", help="Write to this file instead of stdout."),
) -> None:
    """Print the recipe's JSON Schema (point yaml-language-server at it for autocomplete)."""
    text = json.dumps(recipe_schema(), indent=2)
    if output:
        from sophiavl_cli.fileio import atomic_write_text

        atomic_write_text(output, text + "\n")
        console.print(f"wrote {output}")
    else:
        typer.echo(text)
