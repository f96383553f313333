"""`sophiavl doctor [RECIPE [overrides...]]`: what this machine has, or what a recipe's run needs of it.

Without a recipe: a table of the machine (torch/CUDA, transformers, Ray, vLLM, flash-attn, reward-model
env, HF cache). With one: the pre-flight `train` / `train-rm` run before Ray starts, alone, as a table
of every check (no Ray, no model load), so a cluster node can be checked before a job is queued.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from sophiavl_cli.cli.options import JsonOutput
from sophiavl_cli.console import console, print_json
from sophiavl_cli.doctor import run_checks

_STYLE = {
    "ok": "[green]ok[/]",
    "warn": "[yellow]warn[/]",
    "missing": "[red]missing[/]",
    "info": "[cyan]info[/]",
    "problem": "[red]problem[/]",
}


def doctor(
    recipe: Path = typer.Argument(
        None,
        help="Check what this recipe's run needs (train or train-rm recipe), e.g. recipes/fullsets.yaml.",
    ),
    overrides: list[str] = typer.Argument(None, help="Dotted overrides, as for train."),
    ray_address: str = typer.Option(
        None, "--ray-address", help="The Ray cluster the run will join (its GPUs are then not counted here)."
    ),
    json_out: JsonOutput = False,
) -> None:
    """Check Python, torch/CUDA, transformers, Ray, vLLM, flash-attn, reward-model env and HF cache; or RECIPE's pre-flight."""
    if recipe is not None:
        _recipe_doctor(recipe, overrides or [], ray_address, json_out)
        return
    rows = run_checks()
    if json_out:
        print_json({"checks": [asdict(r) for r in rows]})
    else:
        table = Table(title="sophiavl doctor", show_lines=False)
        for col in ("check", "value", "verdict", "advice"):
            table.add_column(col)
        for r in rows:
            table.add_row(escape(r.name), escape(r.value), _STYLE[r.verdict], escape(r.advice))
        console.print(table)
    if any(r.verdict == "missing" for r in rows):
        raise typer.Exit(1)


def _recipe_doctor(path: Path, overrides: list[str], ray_address: str | None, json_out: bool) -> None:
    from sophiavl_cli.config import load_recipe
    from sophiavl_cli.config.loading import load_recipe_data
    from sophiavl_cli.config.recipe import Recipe
    from sophiavl_cli.config.rm_recipe import RMRecipe
    from sophiavl_cli.engine.lifecycle.preflight import findings

    keys = load_recipe_data(path).keys()
    kind = RMRecipe if "model" in keys and "worker" not in keys else Recipe
    loaded = load_recipe(path, overrides, model=kind)
    results = findings(loaded, ray_address=ray_address)
    command = "train-rm" if kind is RMRecipe else "train"
    if json_out:
        print_json({"recipe": str(path), "command": command, "checks": [asdict(f) for f in results]})
    else:
        table = Table(title=f"sophiavl doctor {path} (pre-flight of `sophiavl {command}`)", show_lines=False)
        for col in ("check", "verdict", "problem and fix"):
            table.add_column(col)
        for f in results:
            verdict = _STYLE["problem"] if f.problem else _STYLE["ok"]
            table.add_row(escape(f.check), verdict, escape(f.problem or ""))
        console.print(table)
    if any(f.problem for f in results):
        raise typer.Exit(1)
