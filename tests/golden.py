"""The golden run: the quickstart's first steps' key metrics, pinned, so a refactor cannot drift.

Resume and learning tests still pass when a refactor changes, say, the loss normalisation or the
reward mixing by a constant; this check does not. `sophiavl train recipes/quickstart.yaml` for 2
steps (test_train_e2e.py's quickstart run; test_golden_run.py's run with blocks resharded after
every forward) must give the reward, loss, KL, entropy and grad norm in `tests/golden/quickstart.json`
at `RTOL` / `ATOL`. Validation and saving come after a step's update and draw nothing from its
seeds, so they do not move these numbers.

A deliberate change of the numbers (a new loss aggregation, another default) rewrites the file:

    SOPHIAVL_UPDATE_GOLDEN=1 pytest tests/test_train_e2e.py -k quickstart_trains

then review `git diff tests/golden/` and say in the commit why the numbers moved. Three reruns
on the 2-core CPU test machine were bit-identical (CPU fp32, fixed seeds and thread counts), so the
tolerance only allows for a reordered float sum in a metric reduction; it is not a place to absorb
a real change.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden" / "quickstart.json"
UPDATE_ENV = "SOPHIAVL_UPDATE_GOLDEN"
STEPS = 2
KEYS = (
    "reward/outcome",
    "reward/thinking",
    "reward/final",
    "actor/loss",
    "actor/pg_loss",
    "actor/kl",
    "actor/entropy",
    "actor/grad_norm",
)
RTOL = 1e-9  # reruns here are bit-identical; this leaves room for float summation order only
ATOL = 1e-12


def golden_rows(rows: list[dict]) -> list[dict[str, float]]:
    """The KEYS of each training step's metrics row, in step order."""
    return [{key: float(row[key]) for key in KEYS} for row in rows if "reward/outcome" in row]


def assert_golden(rows: list[dict], *, may_update: bool = False) -> None:
    """The run's first STEPS steps equal the golden file; with UPDATE_ENV=1 (and `may_update`) they
    rewrite it instead, and the test is skipped so nobody mistakes a rewrite for a pass."""
    got = golden_rows(rows)
    assert len(got) == STEPS
    if may_update and os.environ.get(UPDATE_ENV) == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps({"steps": got}, indent=1) + "\n", encoding="utf-8")
        pytest.skip(f"rewrote {GOLDEN.name} ({UPDATE_ENV}=1): review and commit the diff")
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))["steps"]
    drift = [
        f"step {step} {key}: golden {want[key]!r}, got {have[key]!r}"
        for step, (want, have) in enumerate(zip(expected, got, strict=True), start=1)
        for key in KEYS
        if not math.isclose(have[key], want[key], rel_tol=RTOL, abs_tol=ATOL)
    ]
    assert not drift, (
        "the quickstart's metrics moved; if that is intended, rerun test_train_e2e.py's quickstart test with "
        f"{UPDATE_ENV}=1 and commit tests/golden/quickstart.json:\n" + "\n".join(drift)
    )
