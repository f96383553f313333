"""The metric registry: what a definition is, and the one place values collected within a step are reduced.

`define` fills `METRICS` (the definitions live in `metrics/keys.py`, which the package imports, so
any import of this module sees them all); `reduce` / `reduce_records` combine micro-batches,
optimizer steps, ranks and groups with each key's reduction; `render_markdown` writes docs/metrics.md.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Reduction = Literal["mean", "sum", "max", "min", "last"]


REDUCTIONS: tuple[Reduction, ...] = ("mean", "sum", "max", "min", "last")


@dataclass(frozen=True)
class MetricDef:
    """One logged quantity. `reduction` combines the values collected for it within one step."""

    key: str
    reduction: Reduction
    meaning: str
    unit: str = ""

    @property
    def is_family(self) -> bool:
        """Whether the key is a pattern like `rm/failures/<kind>` rather than one name."""
        return self.key.endswith(">") and "/<" in self.key

    @property
    def prefix(self) -> str:
        """For a family, the part before the placeholder (`rm/failures/`); else the key."""
        return self.key[: self.key.rindex("<")] if self.is_family else self.key


METRICS: dict[str, MetricDef] = {}


def define(key: str, reduction: Reduction, meaning: str, unit: str = "") -> str:
    if key in METRICS:
        raise ValueError(f"metric {key!r} is defined twice")
    if reduction not in REDUCTIONS:
        raise ValueError(f"metric {key!r}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    METRICS[key] = MetricDef(key, reduction, meaning, unit)
    return key


def metric(key: str) -> MetricDef:
    """The definition of `key` (a family member resolves to its family); KeyError with did-you-mean."""
    found = METRICS.get(key)
    if found is not None:
        return found
    for definition in METRICS.values():
        rest = key[len(definition.prefix) :]
        if definition.is_family and key.startswith(definition.prefix) and rest and "/" not in rest:
            return definition
    close = difflib.get_close_matches(key, list(METRICS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise KeyError(f"unknown metric {key!r}{hint} (metrics are defined in sophiavl_cli/metrics/keys.py)")


def family_key(family: str, name: str) -> str:
    """The member `name` of a family key: `family_key(RM_FAILURES_FAMILY, "timeout")` -> `rm/failures/timeout`."""
    definition = METRICS[family]
    if not definition.is_family:
        raise KeyError(f"metric {family!r} is not a family")
    key = definition.prefix + name
    metric(key)  # one non-empty segment
    return key


def namespaced(namespace: str, values: Mapping[str, float]) -> dict[str, float]:
    """`{name: v}` -> `{namespace/name: v}`, each key checked against the registry.

    For quantities named by the code that computes them (the loss terms of `algo.losses`).
    """
    out = {f"{namespace}/{name}": float(value) for name, value in values.items()}
    for key in out:
        metric(key)
    return out


def reduce(key: str, values: Iterable[float]) -> float:
    """Combine one step's values of `key` with its reduction (NaNs are kept: they signal a bug)."""
    items = [float(v) for v in values]
    if not items:
        raise ValueError(f"metric {key!r}: no values to reduce")
    reduction = metric(key).reduction
    if reduction == "mean":
        return math.fsum(items) / len(items)
    if reduction == "sum":
        return math.fsum(items)
    if reduction == "max":
        return max(items)
    if reduction == "min":
        return min(items)
    return items[-1]


def reduce_records(records: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """One value per key from records in time/rank order (micro-batches, optimizer steps, ranks).

    Each key is reduced over the records that have it, with its registry reduction: so
    `actor/skipped` is the max, `actor/lr` the last, `actor/loss` the mean.
    """
    collected: dict[str, list[float]] = {}
    for record in records:
        for key, value in record.items():
            collected.setdefault(key, []).append(value)
    return {key: reduce(key, values) for key, values in collected.items()}


def timing_key(phase: str) -> str:
    """`timing/<phase>`, which must be defined here (a timed phase is a documented metric)."""
    return metric(f"timing/{phase}").key


def render_markdown() -> str:
    """The text of docs/metrics.md: one table per namespace, in definition order."""
    lines = [
        "# Metrics",
        "",
        "Every metric sophiavl logs (console, JSONL, TensorBoard, W&B), generated from",
        "`sophiavl_cli/metrics/keys.py` by `python -m sophiavl_cli.metrics > docs/metrics.md`.",
        "*Reduction* is how the values collected within one step (micro-batches, ranks, groups)",
        "become the logged value. A key ending in `/<name>` stands for a family of keys.",
    ]
    namespaces = list(dict.fromkeys(key.split("/", 1)[0] for key in METRICS))
    for namespace in namespaces:
        lines += ["", f"## {namespace}", "", "| key | reduction | unit | meaning |", "|---|---|---|---|"]
        for definition in METRICS.values():
            if definition.key.split("/", 1)[0] == namespace:
                cells = (definition.key, definition.reduction, definition.unit, definition.meaning)
                lines.append("| " + " | ".join(_cell(c, code=i == 0) for i, c in enumerate(cells)) + " |")
    return "\n".join(lines) + "\n"


def _cell(text: str, *, code: bool) -> str:
    text = text.replace("|", "\\|")
    return f"`{text}`" if code and text else text
