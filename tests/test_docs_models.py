"""docs/models.md's table of families x paths says "tested" exactly where a test runs the path.

Which families each path is tested on is one list (`tests/model_families.py`) that the tests of
those paths are parametrised over; this reads the table and compares.
"""

from __future__ import annotations

from pathlib import Path

from model_families import ALL, PATHS

from sophiavl_cli.models.builtin import BUILTINS
from sophiavl_cli.models.families import FAMILIES

TABLE_HEAD = "| family | `model_type` | built-in |"


def _table() -> tuple[list[str], list[dict[str, str]]]:
    lines = (
        (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text(encoding="utf-8").splitlines()
    )
    start = next(i for i, line in enumerate(lines) if line.startswith(TABLE_HEAD))
    header = [cell.strip() for cell in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(dict(zip(header, (cell.strip() for cell in line.strip("|").split("|")), strict=True)))
    return header, rows


def test_every_accepted_family_has_a_row_and_a_builtin_the_tests_run() -> None:
    _, rows = _table()
    assert [row["`model_type`"].strip("`") for row in rows] == list(FAMILIES)
    builtins = [row["built-in"].strip("`") for row in rows]
    assert sorted(builtins) == sorted(ALL)
    assert all(
        BUILTINS[name].family == row["`model_type`"].strip("`")
        for name, row in zip(builtins, rows, strict=True)
    )


def test_each_path_column_says_tested_exactly_for_the_families_its_tests_run() -> None:
    header, rows = _table()
    assert set(PATHS) <= set(header), sorted(set(PATHS) - set(header))
    for path, tested in PATHS.items():
        for row in rows:
            name = row["built-in"].strip("`")
            said = row[path].endswith("tested") and not row[path].endswith("not tested")
            assert said == (name in tested), f"docs/models.md: {path} for {name} says {row[path]!r}"
