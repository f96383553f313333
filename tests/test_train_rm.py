"""`sophiavl train-rm` on CPU: it learns, resumes bit-identically, and its checkpoint serves as the RM.

Real runs (Ray, FSDP2 over gloo, two ranks) of `recipes/thinking-rm-quickstart.yaml` on the built-in
synthetic set, whose scores follow a rule the tiny model can learn. The learning run is shared by
the tests through a module fixture; the resume runs are short (4 steps, no evaluation).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sophiavl_cli.config.loading import load_recipe
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.data.rm_rows import load_rm_rows
from sophiavl_cli.engine.checkpoint.merge import merge_checkpoint
from sophiavl_cli.engine.checkpoint.store import CheckpointManager

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "thinking-rm-quickstart.yaml"
RUN = Path("sophiavl") / "thinking_rm_quickstart"
# Measured on the 2-core dev CPU (the quickstart as committed, constant LR): held-out Spearman 0.0
# before training (the untrained model answers one score for every row), 0.71 after 88 steps, 0.97
# after 176 (the end; 1.0 after 264). The bar leaves room for another machine's float noise but not
# for a model that has not learnt the rule.
SPEARMAN_BAR = 0.8
MACHINE_KEYS = ("timing/",)


def _train_rm(output_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "sophiavl_cli",
        "train-rm",
        str(QUICKSTART),
        f"trainer.output_dir={output_dir}",
    ]
    result = subprocess.run(
        [*command, *args], cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def learned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The quickstart as committed; its run dir."""
    out = tmp_path_factory.mktemp("rm-learn")
    _train_rm(out)
    return out / RUN


def test_held_out_spearman_rises_from_zero_above_the_measured_bar(learned: Path) -> None:
    rows = {row["step"]: row for row in _jsonl(learned / "metrics.jsonl")}
    last = max(rows)
    assert (
        last
        == len(load_rm_rows("builtin:thinking-demo@train"))
        // 16
        * load_recipe(QUICKSTART, model=RMRecipe).trainer.total_epochs
    )
    assert abs(rows[0]["val/rm_spearman"]) < 0.2
    assert rows[last]["val/rm_spearman"] > SPEARMAN_BAR
    assert rows[last]["val/rm_mae"] < rows[0]["val/rm_mae"]
    assert rows[last]["sft/loss"] < rows[1]["sft/loss"]
    report = json.loads((learned / "rm_eval" / "report.json").read_text())
    assert report["spearman"] == pytest.approx(rows[last]["val/rm_spearman"])
    assert (learned / "rm_eval" / "calibration.png").read_bytes().startswith(b"\x89PNG")
    assert (learned / "curves" / "rm_eval.png").is_file() and (learned / "curves" / "sft_loss.png").is_file()


def test_merged_checkpoint_serves_and_the_reward_client_scores_with_it(learned: Path, tmp_path: Path) -> None:
    """merge -> the reward server (what `serve-reward --backend hf` runs) -> the thinking-reward client."""
    from sophiavl_cli.eval.reward_model import evaluate_reward_model

    checkpoint = CheckpointManager(learned / "checkpoints").find_latest()
    assert checkpoint is not None
    merged = tmp_path / "merged"
    merge_checkpoint(checkpoint, merged)
    result = evaluate_reward_model(
        str(merged), "builtin:thinking-demo@val", out_dir=tmp_path / "eval", limit=22
    )
    assert result.quality.failures == 0 and result.quality.scored == 22
    assert result.quality.spearman > SPEARMAN_BAR
    assert (tmp_path / "eval" / "confusion.md").is_file()


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    short = (
        "trainer.max_steps=4",
        "trainer.val_freq=-1",
        "trainer.val_before_train=false",
        "trainer.save_freq=2",
    )
    straight = tmp_path_factory.mktemp("rm-straight")
    _train_rm(straight, *short)
    pieces = tmp_path_factory.mktemp("rm-pieces")
    _train_rm(pieces, *short, "trainer.stop_after_steps=2")
    _train_rm(pieces, *short)
    return straight / RUN, pieces / RUN


def test_resume_is_bit_identical_to_the_uninterrupted_run(resumed: tuple[Path, Path]) -> None:
    straight, pieces = resumed

    def plain(path: Path) -> list[dict]:
        return [
            {k: v for k, v in row.items() if not k.startswith(MACHINE_KEYS)}
            for row in _jsonl(path / "metrics.jsonl")
        ]

    assert [row["step"] for row in plain(pieces)] == [1, 2, 3, 4]
    assert plain(pieces) == plain(straight)
    a, b = (p / "checkpoints" / "global_step_4" / "driver_state.json" for p in (straight, pieces))
    assert json.loads(a.read_text())["loader"] == json.loads(b.read_text())["loader"]
