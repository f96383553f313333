"""Split a step's sequences across ranks and into micro-batches, as plain numpy.

Pure logic (no torch, no Ray) so the rules that keep ranks in lock-step are unit-tested:

- every rank gets the same number of sequences (so every rank runs the same number of
  micro-batches, i.e. the same FSDP collectives), and the token counts are balanced between
  ranks so no rank waits long for the slowest one;
- a micro-batch is laid out as `[left-padded prompt | right-padded response]`, so the response
  of every row starts at the same column and its log-probs are one slice of the logits;
- a micro-batch with no image still runs the vision tower on a small dummy image: FSDP2 shards
  the vision blocks, and a rank that skipped them while another ran them would pair different
  collectives (gloo aborts, NCCL hangs).
"""

from __future__ import annotations

from collections.abc import Sequence as Seq
from dataclasses import dataclass, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class TrainSequence:
    """One rollout as the workers train on it (what crosses Ray: lists and numpy arrays)."""

    index: int  # position in the step's batch: prompt_index * n + sample_index
    prompt_ids: list[int]
    response_ids: list[int]
    pixel_values: Any  # float32 [patches, patch_dim] (base.WirePatches on the way to a worker) | None
    image_grid_thw: np.ndarray | None  # int64 [images, 3]
    advantage: float | np.ndarray = 0.0  # per sequence, or float32 [len(response_ids)] per token
    old_logprobs: np.ndarray | None = None  # float32 [len(response_ids)]: the rollout's, when opted in

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.response_ids)


@dataclass(frozen=True)
class MicroBatch:
    """Padded arrays for one forward pass. Response tokens sit at columns [prompt_width:]."""

    indices: list[int]  # TrainSequence.index of every row
    input_ids: np.ndarray  # int64 [B, P + R]
    attention_mask: np.ndarray  # int64 [B, P + R]
    response_mask: np.ndarray  # float32 [B, R]
    prompt_width: int  # P
    pixel_values: np.ndarray | None  # float32 [patches, patch_dim]; None -> run a dummy image
    image_grid_thw: np.ndarray | None  # int64 [images, 3]
    advantages: np.ndarray  # float32 [B], or [B, R] when any sequence has per-token advantages

    @property
    def num_response_tokens(self) -> int:
        return int(self.response_mask.sum())


def balance_across_ranks(token_counts: Seq[int], world_size: int) -> list[list[int]]:
    """Positions of `token_counts` per rank: equal counts per rank, token sums as even as possible.

    Greedy longest-first: each sequence, longest first (ties by position), goes to the rank with
    the fewest tokens among those not yet full. Each rank's positions come back sorted, so the
    result depends only on the inputs.

    Example:
        >>> balance_across_ranks([10, 1, 9, 2], 2)
        [[0, 1], [2, 3]]
    """
    if world_size <= 0:
        raise ValueError("world_size must be positive")
    if len(token_counts) % world_size:
        raise ValueError(f"{len(token_counts)} sequences cannot be split evenly over {world_size} ranks")
    capacity = len(token_counts) // world_size
    loads = [0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    order = sorted(range(len(token_counts)), key=lambda i: (-token_counts[i], i))
    for position in order:
        open_ranks = [r for r in range(world_size) if len(assigned[r]) < capacity]
        rank = min(open_ranks, key=lambda r: (loads[r], r))
        assigned[rank].append(position)
        loads[rank] += token_counts[position]
    return [sorted(positions) for positions in assigned]


def spread_across_ranks(costs: Seq[float], world_size: int) -> list[list[int]]:
    """Positions per rank when the count need not divide: sizes differ by at most one, costs balanced.

    Used for generation, where a rank may get one prompt more than another (or none at all).

    Example:
        >>> spread_across_ranks([5, 1, 3], 2)
        [[0], [1, 2]]
    """
    if world_size <= 0:
        raise ValueError("world_size must be positive")
    capacity = -(-len(costs) // world_size)
    loads = [0.0] * world_size
    assigned: list[list[int]] = [[] for _ in range(world_size)]
    for position in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min((r for r in range(world_size) if len(assigned[r]) < capacity), key=lambda r: (loads[r], r))
        assigned[rank].append(position)
        loads[rank] += costs[position]
    return [sorted(positions) for positions in assigned]


def chunk(items: Seq[int], size: int) -> list[list[int]]:
    """Consecutive chunks of `size` (the last may be shorter)."""
    if size <= 0:
        raise ValueError("chunk size must be positive")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


def pad_left(rows: Seq[Seq[int]], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows right-aligned in a [B, width] array, plus the mask of real tokens."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = row
            mask[i, width - len(row) :] = 1
    return ids, mask


def pad_right(rows: Seq[Seq[int]], pad_id: int, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows left-aligned in a [B, width] array, plus the mask of real tokens."""
    width = max((len(r) for r in rows), default=0) if width is None else width
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return ids, mask


def build_micro_batch(sequences: Seq[TrainSequence], pad_id: int) -> MicroBatch:
    """Pad a few sequences into one `[prompt | response]` batch, images in row order."""
    prompt_ids, prompt_mask = pad_left([s.prompt_ids for s in sequences], pad_id)
    response_ids, response_mask = pad_right([s.response_ids for s in sequences], pad_id)
    with_images = [s for s in sequences if s.pixel_values is not None and s.image_grid_thw is not None]
    pixel_values = np.concatenate([s.pixel_values for s in with_images]) if with_images else None  # type: ignore[misc]
    grids = np.concatenate([s.image_grid_thw for s in with_images]) if with_images else None  # type: ignore[misc]
    return MicroBatch(
        indices=[s.index for s in sequences],
        input_ids=np.concatenate([prompt_ids, response_ids], axis=1),
        attention_mask=np.concatenate([prompt_mask, response_mask], axis=1),
        response_mask=response_mask.astype(np.float32),
        prompt_width=prompt_ids.shape[1],
        pixel_values=pixel_values,
        image_grid_thw=grids,
        advantages=_advantages(sequences, response_mask.shape[1]),
    )


def _advantages(sequences: Seq[TrainSequence], width: int) -> np.ndarray:
    """[B] when every advantage is a scalar, else [B, width] (scalars broadcast, arrays right-padded)."""
    if all(np.ndim(s.advantage) == 0 for s in sequences):
        return np.asarray([float(s.advantage) for s in sequences], dtype=np.float32)
    out = np.zeros((len(sequences), width), dtype=np.float32)
    for row, s in enumerate(sequences):
        values = np.asarray(s.advantage, dtype=np.float32)
        if values.ndim == 0:
            out[row, : len(s.response_ids)] = values
        else:
            out[row, : len(values)] = values
    return out


def micro_batches(sequences: Seq[TrainSequence], size: int, pad_id: int) -> list[MicroBatch]:
    """The rank's sequences, in order, as padded micro-batches of `size` rows."""
    return [
        build_micro_batch([sequences[i] for i in rows], pad_id) for rows in chunk(range(len(sequences)), size)
    ]


def padded_tokens(lengths: Seq[tuple[int, int]]) -> int:
    """Tokens of one `[left-padded prompt | right-padded response]` batch of (prompt, response) lengths."""
    if not lengths:
        return 0
    return len(lengths) * (max(p for p, _ in lengths) + max(r for _, r in lengths))


def token_budget_groups(
    lengths: Seq[tuple[int, int]], max_tokens: int, count: int | None = None
) -> list[list[int]]:
    """Positions of (prompt, response) `lengths` grouped into micro-batches of at most `max_tokens`.

    The budget counts padding (`padded_tokens`), which is what a forward pass costs. Sequences go
    longest first (ties by position), each into the current group while it still fits, else into
    a new one; a sequence longer than the budget on its own gets a micro-batch of its own. With
    `count` (at least the number this needs, at most one per sequence) the groups with the most
    rows are halved until there are exactly `count`: every rank must run the same number of
    micro-batches, so the driver asks each for the largest count any rank needs.

    Example:
        >>> token_budget_groups([(2, 2), (2, 6), (2, 1), (2, 2)], 16)
        [[1, 0], [3, 2]]
    """
    if max_tokens <= 0:
        raise ValueError("max_tokens must be positive")
    groups: list[list[int]] = []
    for position in sorted(range(len(lengths)), key=lambda i: (-sum(lengths[i]), i)):
        current = groups[-1] if groups else None
        if current is not None and padded_tokens([lengths[i] for i in [*current, position]]) <= max_tokens:
            current.append(position)
        else:
            groups.append([position])
    if count is None:
        return groups
    if not len(groups) <= count <= len(lengths):
        raise ValueError(
            f"{len(lengths)} sequences cannot make {count} micro-batches of at most {max_tokens} tokens "
            f"(they need at least {len(groups)})"
        )
    while len(groups) < count:
        largest = max(range(len(groups)), key=lambda g: (len(groups[g]), -g))
        rows = groups[largest]
        groups[largest : largest + 1] = [rows[: len(rows) // 2], rows[len(rows) // 2 :]]
    return groups


def shared_micro_batch_count(per_rank: Seq[Seq[tuple[int, int]]], max_tokens: int) -> int:
    """How many micro-batches every rank runs: the most that any rank's sequences need.

    Example:
        >>> shared_micro_batch_count([[(2, 2), (2, 2)], [(2, 6), (2, 6)]], 16)
        2
    """
    return max(len(token_budget_groups(lengths, max_tokens)) for lengths in per_rank)


def budget_micro_batches(
    sequences: Seq[TrainSequence], max_tokens: int, count: int, pad_id: int
) -> list[MicroBatch]:
    """The rank's sequences as exactly `count` padded micro-batches of at most `max_tokens` each."""
    lengths = [(len(s.prompt_ids), len(s.response_ids)) for s in sequences]
    groups = token_budget_groups(lengths, max_tokens, count)
    return [build_micro_batch([sequences[i] for i in rows], pad_id) for rows in groups]


def dummy_image(patch_dim: int, merge_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The smallest image the vision tower accepts: one merge window of zero patches.

    Run (and multiplied by zero in the loss) on micro-batches without images, so every rank
    performs the vision tower's collectives the same number of times in the same order.
    """
    pixel_values = np.zeros((merge_size * merge_size, patch_dim), dtype=np.float32)
    grid = np.asarray([[1, merge_size, merge_size]], dtype=np.int64)
    return pixel_values, grid


def minibatch_slices(num_prompts: int, prompts_per_update: int, n: int) -> list[list[int]]:
    """Sequence indices of each optimizer step: consecutive groups of `prompts_per_update` prompts.

    Whole groups stay in one optimizer step, so every group's advantages are used together.

    Example:
        >>> minibatch_slices(4, 2, 2)
        [[0, 1, 2, 3], [4, 5, 6, 7]]
    """
    if num_prompts % prompts_per_update:
        raise ValueError(f"{num_prompts} prompts do not split into updates of {prompts_per_update}")
    per = prompts_per_update * n
    return [list(range(start, start + per)) for start in range(0, num_prompts * n, per)]


def with_advantage(sequence: TrainSequence, advantage: float | np.ndarray) -> TrainSequence:
    """One advantage per sequence (float) or per response token (array of its length)."""
    if isinstance(advantage, np.ndarray) and advantage.ndim == 1:
        return replace(sequence, advantage=advantage.astype(np.float32))
    return replace(sequence, advantage=float(advantage))


def stack_rows(per_sequence: dict[int, np.ndarray], mb: MicroBatch) -> np.ndarray:
    """Per-sequence arrays of the micro-batch's rows, right-padded to its response width: [B, R]."""
    out = np.zeros(mb.response_mask.shape, dtype=np.float32)
    for row, index in enumerate(mb.indices):
        values = per_sequence[index]
        out[row, : len(values)] = values
    return out
