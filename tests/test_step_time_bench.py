"""The step-time benchmark's bare PyTorch loop (the limit sophiavl's framework tax is measured against)
runs the same workload and reports every phase the comparison table reads."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_time  # noqa: E402


def test_the_bare_loop_runs_the_benchmark_step_and_reports_each_phase(tmp_path):
    rows = step_time.write_image_rows(tmp_path)
    result = tmp_path / "bare.json"
    step_time.bare_worker(rows, result, steps=1)
    (record,) = json.loads(result.read_text())
    phases = {phase for _, _, phase in step_time.PHASES}
    assert phases <= set(record)
    assert all(math.isfinite(record[p]) and record[p] >= 0 for p in phases)
    parts = record["gen"] + record["reward"] + record["logprobs"] + record["update"]
    assert math.isclose(parts, record["step"], rel_tol=1e-6)
    # four image prompts x four rollouts: each sequence has its prompt's image tokens at least
    assert record["tokens"] > step_time.PROMPTS_PER_STEP * step_time.N * 16
