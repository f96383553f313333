"""Evaluation spread over shards: one Ray actor per shard, merged by index, resumable per shard.

On CPU the same code that runs one vLLM engine per GPU runs 2 hf shards of the tiny model; the
merged predictions must equal a single-process run's, line for line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from eval_fixtures import write_tsv

from sophiavl_cli.eval.benchmarks import get_benchmark
from sophiavl_cli.eval.cache import PREDICTIONS_FILE
from sophiavl_cli.eval.runner import run_eval
from sophiavl_cli.eval.settings import EvalSettings
from sophiavl_cli.eval.sharding import plan, shard_file

TINY = "builtin:tiny-qwen2.5-vl"


def _settings(data: Path, out: Path, **overrides: Any) -> EvalSettings:
    values: dict[str, Any] = {
        "model": TINY,
        "benchmarks": (get_benchmark("MMBench"),),
        "output_dir": out,
        "data": data,
        "max_new_tokens": 4,
        "min_pixels": 4 * 28 * 28,
        "max_pixels": 16 * 28 * 28,
    }
    values.update(overrides)
    return EvalSettings(**values)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_samples_are_dealt_to_shards_by_position_and_only_missing_ones_are_planned() -> None:
    bench = get_benchmark("MMBench")
    samples = [
        bench.from_record(
            {"index": str(i), "question": "q", "answer": "A", "A": "x", "B": "y"}, "tsv", "r", ()
        )
        for i in range(5)
    ]
    shards = plan(samples, {"0", "1", "3", "4"}, 2)
    assert [[s.index for s in shard] for shard in shards] == [["0", "4"], ["1", "3"]]


def test_two_cpu_shards_merge_to_the_single_process_predictions_and_resume_per_shard(tmp_path: Path) -> None:
    data = write_tsv("MMBench", tmp_path / "data")
    single = run_eval(_settings(data, tmp_path / "single", shards=1))[0]
    expected = _lines(tmp_path / "single" / "MMBench" / PREDICTIONS_FILE)
    assert len(expected) == 6

    # shard 1 of 2 was interrupted after its first answer (data position 1)
    folder = tmp_path / "sharded" / "MMBench"
    folder.mkdir(parents=True)
    resumed = {**expected[1], "prediction": "resumed answer"}
    shard_file(folder, 1, 2).write_text(json.dumps(resumed) + "\n", encoding="utf-8")

    sharded = run_eval(_settings(data, tmp_path / "sharded", shards=2))[0]
    merged = _lines(folder / PREDICTIONS_FILE)
    assert [r["index"] for r in merged] == [r["index"] for r in expected]  # data order
    assert merged[1]["prediction"] == "resumed answer"  # kept, not generated again
    assert [r for n, r in enumerate(merged) if n != 1] == [r for n, r in enumerate(expected) if n != 1]
    assert not list(folder.glob("predictions.shard-*"))
    assert sharded.score.num_items == single.score.num_items == 2
