"""How `--help` shows options: a flag takes no value, so no `<bool>` type is printed after it.

Typer's rich help prints every option's type, flags included (`--json <bool>`, `--help <bool>`),
which reads as if the flag wanted a value. Typer has no setting for this (the built-in `--help`
option cannot be given a metavar), so the type column is left empty for flags, once, at import.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperOption

_original = TyperOption.display_type_rich


def _flag_shows_no_type(self: TyperOption, ctx: Any) -> str | None:
    return None if self.is_flag else _original(self, ctx)


TyperOption.display_type_rich = _flag_shows_no_type  # type: ignore[method-assign]
