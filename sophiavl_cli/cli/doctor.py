"""`sophiavl doctor`: a table of what this machine has, with a verdict per row."""

from __future__ import annotations

from dataclasses import asdict

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
}


def doctor(
    json_out: JsonOutput = False,
) -> None:
    """Check Python, torch/CUDA, transformers, Ray, vLLM, flash-attn, reward-model env and HF cache."""
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
