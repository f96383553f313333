"""The golden metrics (tests/golden.py) hold with every FSDP2 block resharded after each forward.

The quickstart keeps blocks gathered through a step (`worker.actor.fsdp.full_shard: false`) and
test_train_e2e.py checks its run against the golden file; resharding after every forward moves the
same values through more all-gathers and must not move a number.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from golden import STEPS, assert_golden

from sophiavl_cli.fileio import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.mark.ray
@pytest.mark.slow
def test_the_quickstart_with_full_resharding_reproduces_the_golden_metrics(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "sophiavl_cli", "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}",
        f"trainer.max_steps={STEPS}", "trainer.val_freq=-1", "trainer.save_freq=-1", "--resume", "none",
        "worker.actor.fsdp.full_shard=true",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert_golden(read_jsonl(tmp_path / "sophiavl" / "quickstart" / "metrics.jsonl"))
