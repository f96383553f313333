"""Each algorithm recipe (`recipes/<name>.yaml`, inheriting the quickstart) trains 2 steps end to end.

Real Ray, FSDP2 over gloo and the built-in thinking RM, as `sophiavl train` runs them; validation
is off to keep each run short. Each run checks what its algorithm adds: DAPO's dynamic-sampling
and overlong metrics, the reference model's absence where KL is off, RLOO's KL in the reward,
CISPO's clipped weights, GRPO pass@k's one nonzero advantage per group (on the quickstart itself).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sophiavl_cli.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ["dapo", "gspo", "dr_grpo", "rloo", "cispo", "sapo"]
# name -> (recipe file, overrides): the algorithm recipes as shipped; GRPO pass@k on the quickstart
# (LoRA over 2 ranks runs in test_families_e2e.py, on Qwen3-VL)
RUNS = {name: (f"{name}.yaml", []) for name in ALGORITHMS} | {
    "grpo_passk": (
        "quickstart.yaml",
        ["algorithm.adv_estimator=grpo_passk", "trainer.experiment_name=grpo_passk"],
    ),
}
KL_LOSS = {"cispo", "grpo_passk"}  # keep the quickstart's KL loss against the reference model


def test_every_algorithm_recipe_inherits_the_quickstart_and_sets_its_keys():
    quickstart = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    recipes = {name: load_recipe(ROOT / "recipes" / f"{name}.yaml") for name in ALGORITHMS}
    for name, recipe in recipes.items():
        assert recipe.data == quickstart.data and recipe.worker.rollout == quickstart.worker.rollout, name
        assert recipe.trainer.experiment_name == name
    assert (
        recipes["dapo"].worker.actor.clip_high == 0.28 and recipes["dapo"].algorithm.dynamic_sampling.enable
    )
    assert (
        recipes["gspo"].worker.actor.policy_loss == "gspo" and recipes["gspo"].worker.actor.clip_low == 3e-4
    )
    assert recipes["dr_grpo"].worker.actor.loss_agg_mode == "seq-mean-token-sum-norm"
    assert recipes["rloo"].algorithm.kl_in_reward and not recipes["rloo"].algorithm.use_kl_loss
    cispo, sapo = recipes["cispo"].worker.actor, recipes["sapo"].worker.actor
    assert cispo.policy_loss == "cispo" and (cispo.clip_low, cispo.clip_high) == (1.0, 4.0)
    assert (
        recipes["cispo"].algorithm.use_kl_loss
        and recipes["cispo"].algorithm.kl_coef == quickstart.algorithm.kl_coef
    )
    assert sapo.policy_loss == "sapo" and (sapo.tau_positive, sapo.tau_negative) == (1.0, 1.05)
    assert sapo.loss_agg_mode == "seq-mean-token-mean" and recipes["sapo"].algorithm.kl_coef == 0


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("name", list(RUNS))
def test_algorithm_recipe_trains_two_steps(tmp_path, name):
    recipe, overrides = RUNS[name]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sophiavl_cli",
            "train",
            str(ROOT / "recipes" / recipe),
            *overrides,
            f"trainer.output_dir={tmp_path}",
            "trainer.max_steps=2",
            "trainer.val_freq=-1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = [
        json.loads(line) for line in (tmp_path / "sophiavl" / name / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "reward/outcome" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert row["actor/skipped"] == 0.0 and math.isfinite(row["actor/loss"]) and row["actor/grad_norm"] > 0
        assert row["rm/calls"] >= 16  # Trust-GRPO's thinking reward shapes every algorithm's reward
        assert ("actor/kl" in row) == (name in KL_LOSS)
        assert ("timing/ref" in row) == (name in KL_LOSS | {"rloo"})  # RLOO's KL is in the reward
    if name == "dapo":
        assert all(r["sampling/rounds"] >= 1 and "reward/overlong_share" in r for r in steps)
    if name == "cispo":  # the clip bounds weights without dropping tokens; the share is still reported
        assert all(
            0.0 <= r["actor/clip_fraction"] <= 1.0 and "actor/clip_fraction_dual" not in r for r in steps
        )
    if name == "sapo":  # a smooth gate: nothing is clipped, so no clip fraction is claimed
        assert all("actor/clip_fraction" not in r for r in steps)
    if name == "grpo_passk":  # 4 rollouts per prompt, at most the best of each gets an advantage
        assert all(r["adv/zero_fraction"] >= 0.75 for r in steps)
