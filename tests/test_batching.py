"""The rules that keep ranks in lock-step: equal counts, balanced tokens, aligned padding, dummy images."""

from __future__ import annotations

import numpy as np
import pytest

from sophiavl_cli.engine.observe.timing import StepTimer
from sophiavl_cli.engine.rollout.base import derive_seed
from sophiavl_cli.engine.schedule import lr_multiplier
from sophiavl_cli.engine.workers.batching import (
    TrainSequence,
    balance_across_ranks,
    build_micro_batch,
    chunk,
    dummy_image,
    micro_batches,
    minibatch_slices,
    pad_left,
    pad_right,
    spread_across_ranks,
)


def _seq(index: int, prompt: int, response: int, *, image: bool = False) -> TrainSequence:
    pixels = np.full((4, 6), float(index), dtype=np.float32) if image else None
    grid = np.asarray([[1, 2, 2]], dtype=np.int64) if image else None
    return TrainSequence(
        index=index,
        prompt_ids=list(range(1, prompt + 1)),
        response_ids=list(range(100, 100 + response)),
        pixel_values=pixels,
        image_grid_thw=grid,
        advantage=float(index),
    )


def test_every_rank_gets_the_same_number_of_sequences():
    counts = [50, 3, 7, 200, 9, 9, 1, 40]
    shards = balance_across_ranks(counts, 4)
    assert [len(s) for s in shards] == [2, 2, 2, 2]
    assert sorted(i for s in shards for i in s) == list(range(8))


def test_token_counts_are_balanced_better_than_in_order_splitting():
    counts = [100, 90, 80, 70, 5, 4, 3, 2]
    shards = balance_across_ranks(counts, 2)
    loads = [sum(counts[i] for i in s) for s in shards]
    naive = [sum(counts[:4]), sum(counts[4:])]
    assert max(loads) - min(loads) < max(naive) - min(naive)
    assert max(loads) - min(loads) <= 20


def test_balancing_is_deterministic_and_sorted_within_each_rank():
    counts = [5, 5, 5, 5, 5, 5]
    assert balance_across_ranks(counts, 3) == balance_across_ranks(list(counts), 3)
    assert all(s == sorted(s) for s in balance_across_ranks(counts, 3))


def test_sequences_that_do_not_split_evenly_are_refused():
    with pytest.raises(ValueError, match="evenly"):
        balance_across_ranks([1, 2, 3], 2)


def test_generation_spread_allows_ranks_with_one_prompt_more_or_none():
    assert [len(s) for s in spread_across_ranks([1, 1, 1], 2)] == [2, 1]
    assert spread_across_ranks([3], 2) == [[0], []]


def test_prompts_are_left_padded_and_responses_right_padded():
    ids, mask = pad_left([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [0, 3]] and mask.tolist() == [[1, 1], [0, 1]]
    ids, mask = pad_right([[1, 2], [3]], pad_id=0)
    assert ids.tolist() == [[1, 2], [3, 0]] and mask.tolist() == [[1, 1], [1, 0]]


def test_micro_batch_puts_every_response_at_the_same_column():
    mb = build_micro_batch([_seq(0, 3, 2), _seq(1, 5, 4)], pad_id=0)
    assert mb.prompt_width == 5
    assert mb.input_ids.shape == (2, 9)
    assert mb.input_ids[0, 5:7].tolist() == [100, 101]
    assert mb.input_ids[1, 5:].tolist() == [100, 101, 102, 103]
    assert mb.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    assert mb.attention_mask.sum(axis=1).tolist() == [5, 9]
    assert mb.num_response_tokens == 6
    assert mb.advantages.tolist() == [0.0, 1.0]


def test_images_are_concatenated_in_row_order_and_text_rows_add_none():
    mb = build_micro_batch([_seq(2, 3, 1, image=True), _seq(3, 3, 1), _seq(5, 3, 1, image=True)], pad_id=0)
    assert mb.pixel_values is not None and mb.image_grid_thw is not None
    assert mb.pixel_values.shape == (8, 6)
    assert mb.pixel_values[:4].max() == 2.0 and mb.pixel_values[4:].min() == 5.0
    assert mb.image_grid_thw.shape == (2, 3)


def test_a_text_only_micro_batch_has_no_pixels_so_the_worker_runs_a_dummy_image():
    mb = build_micro_batch([_seq(0, 3, 1), _seq(1, 3, 1)], pad_id=0)
    assert mb.pixel_values is None and mb.image_grid_thw is None
    pixels, grid = dummy_image(patch_dim=1176, merge_size=2)
    assert pixels.shape == (4, 1176) and grid.tolist() == [[1, 2, 2]]
    assert int(np.prod(grid)) == pixels.shape[0]


def test_equal_counts_per_rank_give_equal_micro_batch_counts():
    sequences = [_seq(i, 2 + i, 1 + i % 3) for i in range(16)]
    shards = balance_across_ranks([s.num_tokens for s in sequences], 2)
    counts = [len(micro_batches([sequences[i] for i in shard], 3, pad_id=0)) for shard in shards]
    assert counts[0] == counts[1] == 3


def test_optimizer_steps_keep_whole_groups_together():
    slices = minibatch_slices(num_prompts=4, prompts_per_update=2, n=3)
    assert slices == [[0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]]
    with pytest.raises(ValueError):
        minibatch_slices(num_prompts=3, prompts_per_update=2, n=3)


def test_chunks_cover_everything_in_order():
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_derived_seeds_depend_only_on_their_parts():
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3)
    assert len({derive_seed(1, step, 0) for step in range(50)}) == 50
    assert derive_seed(1, 2, 3) != derive_seed(1, 3, 2)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("constant", [1.0, 1.0, 1.0, 1.0]),
        ("linear", [1.0, 0.75, 0.5, 0.25]),
        ("cosine", [1.0, 0.854, 0.5, 0.146]),
    ],
)
def test_lr_schedules_without_warmup(kind, expected):
    assert [round(lr_multiplier(s, 4, kind=kind), 3) for s in range(4)] == expected


def test_warmup_rises_linearly_to_the_base_lr():
    assert [round(lr_multiplier(s, 10, kind="constant", warmup_ratio=0.3), 3) for s in range(4)] == [
        0.333,
        0.667,
        1.0,
        1.0,
    ]


def test_step_timer_names_each_phase_as_a_timing_metric():
    timer = StepTimer()
    with timer("gen"):
        pass
    with timer("gen"):
        pass
    timer.add("update", 0.5)
    metrics = timer.metrics()
    assert set(metrics) == {"timing/gen", "timing/update", "timing/step"}
    assert metrics["timing/update"] == 0.5
