"""One place for terminal output, so every command prints the same way (and tests can capture it)."""

from __future__ import annotations

import math
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from sophiavl_cli.fileio import json_text

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


def print_json(obj: Any) -> None:
    """Machine-readable output: one JSON object on stdout, nothing else."""
    sys.stdout.write(json_text(obj, default=str) + "\n")
    sys.stdout.flush()


def fail(message: str) -> None:
    """Print a user error as one red line on stderr (the caller sets the exit code)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)


def stat(value: float | None, spec: str = ".4g") -> str:
    """A statistic for the screen; one that is undefined (None, NaN: nothing to compute it from) is `n/a`."""
    if value is None or not math.isfinite(float(value)):
        return "n/a"
    return format(float(value), spec)
