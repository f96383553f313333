"""`sophiavl train` end to end with the speed options: token-budget micro-batches, rollout log-probs, MFU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.ray
@pytest.mark.slow
def test_a_step_with_a_token_budget_and_rollout_logprobs_logs_throughput_and_mfu(tmp_path):
    command = [
        sys.executable,
        "-m",
        "sophiavl_cli",
        "train",
        str(ROOT / "recipes" / "quickstart.yaml"),
        f"trainer.output_dir={tmp_path}",
        "trainer.max_steps=1",
        "trainer.val_freq=-1",
        "algorithm.trust.enable=false",
        "worker.actor.max_tokens_per_micro_batch=600",
        "worker.rollout.use_rollout_logprobs=true",
    ]
    env = {**os.environ, "SOPHIAVL_PEAK_FLOPS": "1e12"}  # a CPU has no table entry: MFU only when told
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=420, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    metrics_file = next(tmp_path.rglob("metrics.jsonl"))
    row = json.loads(metrics_file.read_text().splitlines()[-1])
    assert row["perf/update_tokens"] == row["perf/tokens"] > 0
    assert row["perf/update_tokens_per_s_per_worker"] > 0 and row["perf/tokens_per_s_per_worker"] > 0
    assert 0 < row["perf/mfu"] < 1
    assert row["timing/old"] < row["timing/ref"]  # the old pass is skipped; the ref pass still runs
    assert row["actor/approx_kl"] < 1e-6  # old log-probs = the rollout's = the policy's before the update
