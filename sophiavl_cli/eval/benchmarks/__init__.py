"""The benchmark registry: one module per benchmark, looked up by name (case-insensitive) or alias."""

from __future__ import annotations

import difflib

from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks import (
    chartqa,
    mathverse,
    mathvision,
    mathvista,
    mmbench,
    mme,
    mmmu,
    mmstar,
    ocrbench,
)
from sophiavl_cli.eval.benchmarks.base import Benchmark, BenchScore, ItemScore, Sample

BENCHMARKS: dict[str, Benchmark] = {
    module.BENCHMARK.name: module.BENCHMARK
    for module in (mathvista, mathverse, mathvision, mmmu, mmstar, mmbench, chartqa, ocrbench, mme)
}

_LOOKUP: dict[str, str] = {}
for _name, _bench in BENCHMARKS.items():
    _LOOKUP[_name.lower()] = _name
    _LOOKUP[_bench.tsv_name.lower()] = _name
    for _alias in _bench.aliases:
        _LOOKUP[_alias.lower()] = _name


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name`; an unknown name gets a one-line error with suggestions."""
    key = name.strip().lower()
    if key in _LOOKUP:
        return BENCHMARKS[_LOOKUP[key]]
    close = difflib.get_close_matches(key, list(_LOOKUP), n=3, cutoff=0.5)
    hint = (
        f"did you mean {', '.join(dict.fromkeys(BENCHMARKS[_LOOKUP[c]].name for c in close))}? "
        if close
        else ""
    )
    raise UserError(f"unknown benchmark {name!r}; {hint}known: {', '.join(BENCHMARKS)}")


def parse_bench_list(value: str) -> list[Benchmark]:
    """`"MathVista,MMMU"` -> the benchmarks, in order, without duplicates."""
    names = [part for part in (p.strip() for p in value.split(",")) if part]
    if not names:
        raise UserError(f"--bench: no benchmark named; choose from {', '.join(BENCHMARKS)}")
    chosen = [get_benchmark(n) for n in names]
    return list({b.name: b for b in chosen}.values())


__all__ = [
    "BENCHMARKS",
    "BenchScore",
    "Benchmark",
    "ItemScore",
    "Sample",
    "get_benchmark",
    "parse_bench_list",
]
