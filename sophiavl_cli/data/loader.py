"""Rows for training, validation and eval: `load_rows(spec)` and the resumable `PromptDataLoader`.

A spec is a comma-separated list of datasets (`"Chart@train, OCR, builtin:demo@val, extra.jsonl"`,
see `sources.parse_spec`). Each is read as stored and mapped lazily, row by row, to the internal
columns:

    prompt (str), answer (str, as given: `<answer>` tags are stripped by the reward),
    images (list of absolute paths or {bytes, path} dicts), problem_type (canonical spelling),
    options (list[str]), data_type (`image` | `text` | ...), source (dataset name), + extra columns

Unlike the released loader, datasets are not cast to one fixed schema before concatenation: each
keeps its own columns and a row lacks the extra columns of the other datasets. Unknown problem
types fail at load time with the file, row and field, not silently as `numerical`.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from sophiavl_cli.data.images import image_list, resolve_image_ref
from sophiavl_cli.data.problem_types import normalize_problem_type, valid_types
from sophiavl_cli.data.registry import registry_path
from sophiavl_cli.data.sources import Table, entry_splits, parse_spec, read_split, resolve_entry
from sophiavl_cli.errors import UserError

REQUIRED_COLUMNS = ("prompt", "answer")


@dataclass(frozen=True)
class RowOrigin:
    """Where a row came from, for messages and reports (`row` is 0-based within its split)."""

    source: str
    split: str
    label: str
    row: int
    where: str


class Rows(Sequence[dict[str, Any]]):
    """Random-access, lazily mapped rows of one or more tables (optionally a subset of them)."""

    def __init__(self, tables: list[Table], indices: np.ndarray | None = None) -> None:
        self.tables = tables
        self._offsets = [0]
        for table in tables:
            self._offsets.append(self._offsets[-1] + len(table))
        self._indices = indices

    def __len__(self) -> int:
        return len(self._indices) if self._indices is not None else self._offsets[-1]

    @overload
    def __getitem__(self, index: int) -> dict[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> list[dict[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        table, local = self._locate(index)
        return map_row(table, local)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]

    def _locate(self, index: int) -> tuple[Table, int]:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"row {index} out of range for {len(self)} rows")
        base = int(self._indices[index]) if self._indices is not None else index
        position = bisect.bisect_right(self._offsets, base) - 1
        return self.tables[position], base - self._offsets[position]

    def origin(self, index: int) -> RowOrigin:
        """The dataset, split, file and row a row came from."""
        table, local = self._locate(index)
        return RowOrigin(table.source, table.split, table.label, local, table.where(local))

    def select(self, indices: Iterable[int]) -> Rows:
        """A view on some rows (e.g. those whose prompt fits `max_prompt_length`)."""
        chosen = np.asarray(list(indices), dtype=np.int64)
        base = self._indices[chosen] if self._indices is not None else chosen
        return Rows(self.tables, base)


# --------------------------------------------------------------------------- mapping


def map_row(table: Table, index: int) -> dict[str, Any]:
    """One stored row mapped to the internal columns (see the module docstring)."""
    raw = table.data[index]
    mapped: dict[str, Any] = {}
    for key, value in raw.items():
        target = table.mapping.get(key, key)
        if key in table.mapping or target not in mapped:  # a mapped column wins over a same-named one
            mapped[target] = value
    images = [resolve_image_ref(ref, table.image_base) for ref in image_list(mapped.pop("images", None))]
    answer = mapped.pop("answer", None)
    problem_type = mapped.pop("problem_type", None) or table.default_type
    options = mapped.pop("options", None) or []
    if isinstance(options, str):  # a single option string, not a list of characters
        options = [options]
    data_type = mapped.pop("data_type", None) or ("image" if images else "text")
    mapped.pop("source", None)
    return {
        "prompt": str(mapped.pop("prompt", None) or ""),
        "answer": "" if answer is None else str(answer),
        "images": images,
        "problem_type": normalize_problem_type(problem_type),
        "options": [str(option) for option in options],
        "data_type": str(data_type),
        "source": table.source,
        **mapped,
    }


def check_mapping(table: Table) -> None:
    """A wrong column mapping fails here, naming the file, the column and the columns it has.

    A table with no rows (an empty file, `[]`) has no columns either: that is said as it is, not
    as a mapping problem.
    """
    table.require_rows()
    have = ", ".join(table.columns) or "none"
    for src, dst in table.mapping.items():
        natively_present = dst in table.columns and dst not in table.mapping
        if src not in table.columns and not natively_present:
            raise UserError(
                f"{table.label}: the column mapping names {src!r} (-> {dst}), which the data does not have "
                f"(columns: {have}); fix the mapping (--column SRC={dst})"
            )
    for internal in REQUIRED_COLUMNS:
        if table.source_column(internal) is None:
            raise UserError(
                f"{table.label}: no column becomes `{internal}` (columns: {have}); "
                f"map one with --column SRC={internal}"
            )


def problem_type_faults(table: Table, extra_types: Iterable[str] = ()) -> Iterator[tuple[int, str]]:
    """(row, message) for each row whose problem type is missing or unknown, read column-wise."""
    allowed = set(valid_types(extra_types))
    column = table.source_column("problem_type")
    if column is None:
        if table.default_type is None:
            yield (
                -1,
                (
                    f"{table.label}: field problem_type: the data has no problem_type column; add one, map one "
                    "with --column SRC=problem_type, or register with --problem-type TYPE"
                ),
            )
        elif normalize_problem_type(table.default_type) not in allowed:
            yield -1, f"{table.label}: field problem_type: unknown default type {table.default_type!r}"
        return
    values = [row.get(column) for row in table.data] if isinstance(table.data, list) else table.data[column]
    for index, value in enumerate(values):
        kind = normalize_problem_type(value or table.default_type)
        if kind not in allowed:
            yield (
                index,
                (
                    f"{table.where(index)}: field problem_type: unknown type {value!r} "
                    f"(valid: {', '.join(sorted(allowed))}); fix the row or add a custom reward for the type"
                ),
            )


# --------------------------------------------------------------------------- loading


def load_tables(spec: str, *, registry: Path | None = None, all_splits: bool = False) -> list[Table]:
    """The tables a spec names; with `all_splits`, a name without `@split` means every split it has."""
    registry = registry_path(registry)
    tables = []
    for name, split in parse_spec(spec):
        entry = resolve_entry(name, registry)
        splits = entry_splits(entry) if (all_splits and split is None) else [split]
        for one in splits:
            table = read_split(entry, one)
            check_mapping(table)
            tables.append(table)
    return tables


def load_rows(
    spec: str,
    *,
    registry: Path | None = None,
    extra_types: Iterable[str] = (),
    strict: bool = True,
) -> Rows:
    """Load and concatenate the datasets of `spec` (rows listed in an entry's `skip_rows` left out).

    With `strict` (training, eval), a missing or unknown problem type is a `UserError` naming the
    file, row and field; the pre-flight check passes `strict=False` to report them all instead.
    """
    extra_types = tuple(extra_types)
    tables = load_tables(spec, registry=registry)
    if strict:
        for table in tables:
            for _, message in problem_type_faults(table, extra_types):
                raise UserError(message)
    rows = Rows(tables)
    if any(table.skip_rows for table in tables):
        rows = rows.select(_kept_indices(tables))
    return rows


def _kept_indices(tables: list[Table]) -> list[int]:
    kept, offset = [], 0
    for table in tables:
        skip = set(table.skip_rows)
        kept.extend(offset + i for i in range(len(table)) if i not in skip)
        offset += len(table)
    return kept


# --------------------------------------------------------------------------- batching


class PromptDataLoader:
    """Batches of rows in a seeded order, with a position that can be saved and restored exactly.

    Epoch `e` visits the rows in the permutation drawn from `(seed, e)`, so the order depends only on
    the seed and the epoch, never on how many times the process was restarted. `state_dict()` after
    k batches, loaded into a fresh loader, continues with batch k + 1 of the same order.
    """

    def __init__(
        self,
        rows: Sequence[dict[str, Any]],
        *,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 1,
        drop_last: bool = True,
    ) -> None:
        if batch_size <= 0:
            raise UserError(f"batch size must be > 0, got {batch_size}")
        if len(rows) == 0:
            raise UserError("the dataset has no rows; check the data spec")
        if drop_last and len(rows) < batch_size:
            raise UserError(
                f"the dataset has {len(rows)} rows, fewer than one batch of {batch_size}; "
                "lower the batch size or add data"
            )
        self.rows = rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._cached_order: tuple[tuple[int, int], np.ndarray] | None = None

    def __len__(self) -> int:
        full, rest = divmod(len(self.rows), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def order(self, epoch: int) -> np.ndarray:
        """The row order of an epoch."""
        if self._cached_order is not None and self._cached_order[0] == (self.seed, epoch):
            return self._cached_order[1]
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self.rows))
        else:
            order = np.arange(len(self.rows))
        self._cached_order = ((self.seed, epoch), order)
        return order

    def next_batch(self) -> list[dict[str, Any]]:
        """The next batch, moving on to the next epoch when this one is used up."""
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        start = self.position * self.batch_size
        picked = self.order(self.epoch)[start : start + self.batch_size]
        self.position += 1
        return [self.rows[int(i)] for i in picked]

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        """The remaining batches of the current epoch (a finished epoch rolls over to the next one)."""
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
        while self.position < len(self):
            yield self.next_batch()

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore a saved position; the saved seed wins, so the resumed order is the original one."""
        self.seed = int(state["seed"])
        self._cached_order = None
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
