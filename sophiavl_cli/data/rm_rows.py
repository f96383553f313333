"""Rows in the Thinking-156k layout, for reward-model training, evaluation and the pre-flight check.

Internal columns: `question` (str, the policy prompt the RM is shown), `images` (absolute paths or
`{bytes, path}` dicts), `reasoning` (the whole policy response), `score` (float in [0, 1]). The
same registry and sources as policy data (`data.sources`): registered names with a column mapping
(`sophiavl register-dataset NAME --column SRC=question ...`), files, folders, hub ids and
`builtin:thinking-demo`. A copy whose columns differ and has no mapping gets the common aliases
below (`problem`/`prompt` -> question, `image`/`path` -> images, `response`/`process` ->
reasoning, `label`/`reward` -> score), each only when the internal column is absent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sophiavl_cli.data.images import image_list, resolve_image_ref
from sophiavl_cli.data.registry import registry_path
from sophiavl_cli.data.sources import Table, entry_splits, parse_spec, read_split, resolve_entry
from sophiavl_cli.errors import UserError

RM_COLUMNS = ("question", "images", "reasoning", "score")
REQUIRED = ("question", "reasoning", "score")
ALIASES: dict[str, tuple[str, ...]] = {
    "question": ("problem", "prompt"),
    "images": ("image", "path"),
    "reasoning": ("response", "process"),
    "score": ("label", "reward"),
}


@dataclass(frozen=True)
class RMRow:
    """One labelled sample: the question, its images, a reasoning process and its score."""

    question: str
    images: list[Any]
    reasoning: str
    score: float
    where: str  # file and row, for messages


def rm_mapping(table: Table) -> dict[str, str]:
    """The table's source -> internal mapping, with aliases filling internal columns nobody maps."""
    # Only mappings onto RM columns: an unregistered file gets the policy data's default mapping
    # (problem -> prompt, ...), which means nothing here.
    mapping = {src: dst for src, dst in table.mapping.items() if dst in RM_COLUMNS}
    targets = set(mapping.values())
    for internal, aliases in ALIASES.items():
        if internal in targets or internal in table.columns:
            continue
        for alias in aliases:
            if alias in table.columns and alias not in mapping:
                mapping[alias] = internal
                break
    return mapping


def check_rm_table(table: Table) -> dict[str, str]:
    """The mapping to use; a missing required column is a `UserError` naming the file and the fix."""
    table.require_rows()
    mapping = rm_mapping(table)
    have = ", ".join(table.columns) or "none"
    for internal in REQUIRED:
        if internal not in mapping.values() and internal not in table.columns:
            raise UserError(
                f"{table.label}: no column becomes `{internal}` (columns: {have}); the Thinking-156k layout needs "
                f"{', '.join(RM_COLUMNS)}: map one with `sophiavl register-dataset NAME --column SRC={internal}`"
            )
    return mapping


def parse_score(value: Any, where: str) -> float:
    """A label as a float in [0, 1]; anything else is a `UserError` naming the row."""
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise UserError(
            f"{where}: field score: {value!r} is not a number; labels are scores in [0, 1]"
        ) from None
    if not math.isfinite(score) or not 0.0 <= score <= 1.0:
        raise UserError(f"{where}: field score: {score} is outside [0, 1]; fix or drop the row")
    return score


def map_rm_row(table: Table, mapping: dict[str, str], index: int) -> RMRow:
    raw = table.data[index]
    mapped: dict[str, Any] = {}
    for key, value in raw.items():
        target = mapping.get(key, key)
        if key in mapping or target not in mapped:
            mapped[target] = value
    where = table.where(index)
    images = [resolve_image_ref(ref, table.image_base) for ref in image_list(mapped.get("images"))]
    return RMRow(
        question=str(mapped.get("question") or ""),
        images=images,
        reasoning=str(mapped.get("reasoning") or ""),
        score=parse_score(mapped.get("score"), where),
        where=where,
    )


def load_rm_tables(spec: str, *, registry: Path | None = None, all_splits: bool = False) -> list[Table]:
    """The tables a spec names (like `loader.load_tables`, checked for the Thinking-156k columns)."""
    registry = registry_path(registry)
    tables = []
    for name, split in parse_spec(spec):
        entry = resolve_entry(name, registry)
        for one in entry_splits(entry) if (all_splits and split is None) else [split]:
            table = read_split(entry, one)
            check_rm_table(table)
            tables.append(table)
    return tables


def load_rm_rows(spec: str, *, registry: Path | None = None, limit: int | None = None) -> list[RMRow]:
    """Every row of `spec` (an entry's `skip_rows` left out), the first `limit` when given."""
    rows: list[RMRow] = []
    for table in load_rm_tables(spec, registry=registry):
        mapping = check_rm_table(table)
        skip = set(table.skip_rows)
        for index in range(len(table)):
            if index in skip:
                continue
            if limit is not None and len(rows) >= limit:
                return rows
            rows.append(map_rm_row(table, mapping, index))
    if not rows:
        raise UserError(f"data spec {spec!r} has no rows; check the dataset")
    return rows


def scores_of(rows: Sequence[RMRow]) -> list[float]:
    return [row.score for row in rows]
