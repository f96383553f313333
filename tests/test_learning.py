"""The whole loop learns: on a trivially learnable reward the tiny model's mean reward rises,
with GRPO (the quickstart) and with the Dr. GRPO, DAPO, GSPO, CISPO and SAPO recipes on the same setup.

The reward is a `reward.custom` type scored on the raw response (`reward.format_gate: false`):
1 when its first letter is a vowel. A random tiny model starts near the vowel share of its
vocabulary (~0.25); 20 GRPO steps of 256 one-token rollouts at a fast learning rate push it
well above that. Thinking reward and KL are off to keep it quick; everything else (Ray, FSDP2
over gloo, rollouts, weight sync, advantages, AdamW) is the real training path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

REWARD = """
def score(answer: str, ground_truth: str) -> float:
    letters = [c for c in answer.lower() if c.isalpha()]
    return 1.0 if letters and letters[0] in "aeiou" else 0.0
"""


# recipe file -> overrides it needs on this one-token task (DAPO's overlong buffer must fit in it)
RECIPES = {
    "quickstart.yaml": [],
    "dr_grpo.yaml": [],
    "dapo.yaml": ["reward.overlong.buffer_length=1"],
    "gspo.yaml": [],
    "cispo.yaml": [],
    "sapo.yaml": [],
}


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_mean_reward_rises_on_a_trivially_learnable_reward(tmp_path, recipe):
    (tmp_path / "vowel.py").write_text(REWARD)
    rows = [{"prompt": f"Say word {i}.", "answer": "a", "problem_type": "vowel"} for i in range(64)]
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [
        f"trainer.output_dir={tmp_path / 'runs'}",
        "trainer.max_steps=20",
        "trainer.total_epochs=10",
        "trainer.val_freq=-1",
        "trainer.save_freq=-1",
        "trainer.logger=[jsonl]",
        "algorithm.trust.enable=false",
        "algorithm.kl_coef=0",
        "reward.format_gate=false",
        f"reward.custom={{vowel: {tmp_path / 'vowel.py'}:score}}",
        f"data.train_files={tmp_path / 'data.jsonl'}",
        "data.val_files=null",
        "data.prompt_preset=none",
        "data.max_response_length=1",
        "data.rollout_batch_size=16",
        "worker.actor.global_batch_size=16",
        "worker.rollout.n=16",
        "worker.actor.micro_batch_size_per_device_for_update=32",
        "worker.actor.micro_batch_size_per_device_for_experience=32",
        "worker.actor.entropy_coef=0",
        "worker.actor.optim.lr=5e-3",
        "trainer.experiment_name=learning",
        *RECIPES[recipe],
    ]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sophiavl_cli",
            "train",
            str(ROOT / "recipes" / recipe),
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    metrics_file = tmp_path / "runs" / "sophiavl" / "learning" / "metrics.jsonl"
    rewards = [json.loads(line)["reward/outcome"] for line in metrics_file.read_text().splitlines()]
    assert len(rewards) == 20
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert last > first + 0.25, f"mean reward went from {first:.3f} to {last:.3f}: {rewards}"
