"""Runs that would train nothing, silently: refused at recipe load when the recipe makes it certain
(a group estimator with one rollout per prompt), said in one line while training otherwise (every
advantage zero for several steps). Pure logic and the recipe loader: milliseconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sophiavl_cli.algo.estimators import (
    EstimatorInput,
    compute_advantages,
    length_mask,
    outcome_token_rewards,
)
from sophiavl_cli.cli.app import main
from sophiavl_cli.config import load_recipe
from sophiavl_cli.config.algorithm import GROUP_ESTIMATORS, AlgorithmConfig
from sophiavl_cli.engine.observe.stalls import ZeroAdvantageWatch
from sophiavl_cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
ESTIMATORS = AlgorithmConfig.model_fields["adv_estimator"].annotation.__args__  # every value the recipe takes


# --------------------------------------------------------------------------- 2. rollout.n = 1


def _all_zero_with_one_rollout(estimator: str) -> bool:
    """What the estimator really gives a batch of groups of one (differing rewards, real lengths)."""
    lengths = np.array([3, 5, 2, 4])
    batch = EstimatorInput(
        outcome_token_rewards(np.array([0.0, 1.0, 0.5, 0.2]), lengths, 6),
        length_mask(lengths, 6),
        np.arange(4),  # one rollout per prompt: every group has one member
    )
    return bool(np.all(compute_advantages(estimator, batch) == 0))


def test_the_group_estimators_are_exactly_those_that_train_nothing_with_one_rollout():
    assert {e for e in ESTIMATORS if _all_zero_with_one_rollout(e)} == set(GROUP_ESTIMATORS)


@pytest.mark.parametrize("estimator", sorted(GROUP_ESTIMATORS))
def test_a_group_estimator_with_one_rollout_is_refused_at_recipe_load(estimator, capsys):
    overrides = [f"algorithm.adv_estimator={estimator}", "worker.rollout.n=1"]
    with pytest.raises(
        UserError, match=rf"algorithm.adv_estimator={estimator} compares the rollouts of a prompt"
    ):
        load_recipe(QUICKSTART, overrides)
    with pytest.raises(SystemExit) as stopped:
        main(["recipe", "validate", str(QUICKSTART), *overrides])
    assert stopped.value.code == 2
    out = " ".join(capsys.readouterr().err.split())
    assert "worker.rollout.n=1 makes every advantage 0 and nothing trains" in out


def test_reinforce_plus_plus_with_one_rollout_still_loads():
    overrides = ["algorithm.adv_estimator=reinforce_plus_plus", "worker.rollout.n=1"]
    recipe = load_recipe(QUICKSTART, [*overrides, "worker.actor.micro_batch_size_per_device_for_update=2"])
    assert recipe.worker.rollout.n == 1


# --------------------------------------------------------------------------- 2. all-zero advantages, said


def test_zero_advantages_for_three_steps_are_said_once_per_streak():
    watch = ZeroAdvantageWatch(patience=3)
    fractions = [1.0, 1.0, 1.0, 1.0, 0.5, 1.0, 1.0, 1.0, None, 1.0]
    notes = {step: note for step, f in enumerate(fractions, start=1) if (note := watch.update(step, f))}
    assert sorted(notes) == [3, 8]
    assert notes[3].startswith("adv/zero_fraction has been 1.0 for 3 steps (1-3): every advantage is 0")
    assert notes[8].startswith("adv/zero_fraction has been 1.0 for 3 steps (6-8)")
    assert all("\n" not in note for note in notes.values())
