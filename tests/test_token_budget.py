"""Token-budget micro-batching: groups fit the budget, ranks agree on counts, the plan follows the recipe."""

from __future__ import annotations

import random

import numpy as np
import pytest

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.engine.step import micro_batch_plan, shard_sequences
from sophiavl_cli.engine.workers.batching import (
    TrainSequence,
    budget_micro_batches,
    padded_tokens,
    shared_micro_batch_count,
    token_budget_groups,
)


def _lengths(seed: int, count: int) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    return [(rng.randint(5, 40), rng.randint(1, 60)) for _ in range(count)]


def _sequence(index: int, prompt: int, response: int) -> TrainSequence:
    return TrainSequence(
        index=index,
        prompt_ids=[7] * prompt,
        response_ids=[9] * response,
        pixel_values=None,
        image_grid_thw=None,
    )


def test_padded_tokens_count_the_left_and_right_padding():
    assert padded_tokens([(3, 1), (1, 5)]) == 2 * (3 + 5)
    assert padded_tokens([]) == 0


@pytest.mark.parametrize("seed", range(5))
def test_every_group_fits_the_budget_and_every_sequence_is_used_once(seed):
    lengths = _lengths(seed, 24)
    groups = token_budget_groups(lengths, 300)
    assert sorted(i for g in groups for i in g) == list(range(24))
    assert all(padded_tokens([lengths[i] for i in g]) <= 300 for g in groups)


def test_a_sequence_over_the_budget_gets_a_micro_batch_of_its_own():
    groups = token_budget_groups([(10, 10), (100, 100), (10, 10)], 50)
    assert [1] in groups and sorted(i for g in groups for i in g) == [0, 1, 2]


def test_a_larger_count_splits_the_biggest_groups_and_still_fits():
    lengths = _lengths(7, 16)
    needed = len(token_budget_groups(lengths, 400))
    for count in range(needed, 17):
        groups = token_budget_groups(lengths, 400, count)
        assert len(groups) == count and all(groups)
        assert sorted(i for g in groups for i in g) == list(range(16))
        assert all(padded_tokens([lengths[i] for i in g]) <= 400 for g in groups)


def test_a_count_below_what_the_budget_needs_is_refused():
    with pytest.raises(ValueError, match="need at least 3"):
        token_budget_groups([(10, 10)] * 3, 20, 2)


def test_ranks_with_unequal_lengths_run_the_same_number_of_micro_batches():
    ranks = [_lengths(1, 8), [(5, 2)] * 8]
    count = shared_micro_batch_count(ranks, 200)
    assert count == len(token_budget_groups(ranks[0], 200)) > len(token_budget_groups(ranks[1], 200))
    batches = [
        budget_micro_batches([_sequence(i, p, r) for i, (p, r) in enumerate(rank)], 200, count, 0)
        for rank in ranks
    ]
    assert [len(b) for b in batches] == [count, count]
    for rank, rank_batches in zip(ranks, batches, strict=True):
        assert sorted(i for mb in rank_batches for i in mb.indices) == list(range(8))
        assert all(mb.input_ids.size <= 200 for mb in rank_batches)  # every sequence alone fits
        assert sum(int(mb.response_mask.sum()) for mb in rank_batches) == sum(r for _, r in rank)


def test_the_plan_gives_one_count_per_optimizer_step_and_none_without_a_budget():
    base = {
        "data": {"rollout_batch_size": 4},
        "worker": {"actor": {"global_batch_size": 2}, "rollout": {"n": 4}},
        "trainer": {"n_workers_per_node": 2},
    }
    rng = np.random.default_rng(0)
    sequences = [_sequence(i, int(rng.integers(5, 30)), int(rng.integers(1, 50))) for i in range(16)]
    recipe = Recipe.model_validate(base)
    shards = shard_sequences(sequences, recipe, 2)
    assert micro_batch_plan(sequences, shards, recipe) == (None, None)

    base["worker"]["actor"]["max_tokens_per_micro_batch"] = 120
    recipe = Recipe.model_validate(base)
    experience, update = micro_batch_plan(sequences, shards, recipe)
    assert update is not None and len(update) == 2  # rollout_batch_size / global_batch_size
    for step, count in enumerate(update):
        per_rank = [[sequences[i] for i in shard[step * 4 : step * 4 + 4]] for shard in shards]
        lengths = [[(len(s.prompt_ids), len(s.response_ids)) for s in rank] for rank in per_rank]
        assert count == max(len(token_budget_groups(r, 120)) for r in lengths)
    assert experience == shared_micro_batch_count(
        [[(len(sequences[i].prompt_ids), len(sequences[i].response_ids)) for i in s] for s in shards], 120
    )


def test_rollout_logprobs_with_nucleus_sampling_are_refused_naming_the_keys():
    with pytest.raises(
        ValueError, match=r"worker\.rollout\.use_rollout_logprobs needs worker\.rollout\.top_p=1"
    ):
        Recipe.model_validate({"worker": {"rollout": {"use_rollout_logprobs": True, "top_p": 0.9}}})
    recipe = Recipe.model_validate({"worker": {"rollout": {"use_rollout_logprobs": True, "top_p": 1.0}}})
    assert recipe.worker.rollout.use_rollout_logprobs
