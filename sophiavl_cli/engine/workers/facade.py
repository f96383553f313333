"""The driver's typed view of the worker actors: one method per `TrainWorker` RPC.

`cluster.WorkerGroup` moves calls by method name (that is how Ray addresses actor methods); this
facade names each method through the class itself (`TrainWorker.update.__name__`), so a renamed or
misspelt RPC fails when this module is imported, an editor follows the call to the worker, and
every argument and result has a type. Calls on all ranks wait for all of them and fail fast
(`WorkerGroup.wait`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from sophiavl_cli.engine.parallel.cluster import WorkerGroup
from sophiavl_cli.engine.rollout import RolloutOutput, RolloutPrompt, SamplingParams
from sophiavl_cli.engine.rollout.base import HeldPatches, WirePatches
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.engine.workers.train_worker import TrainWorker, WorkerSpec


def _rpc(method: Callable[..., Any]) -> str:
    return method.__name__


def _held_or_sent(sequence: TrainSequence, held: set[int]) -> TrainSequence:
    patches = sequence.pixel_values
    if isinstance(patches, WirePatches) and patches.key in held:
        return replace(sequence, pixel_values=HeldPatches(patches.key))
    return sequence


class CommonWorkers:
    """The RPCs every kind of worker (`TrainWorker` and its subclasses) answers: rendezvous,
    description, checkpoints, shutdown. Per-rank arguments are lists in rank order; results come
    back in rank order."""

    def __init__(self, group: WorkerGroup) -> None:
        self.group = group

    @property
    def world_size(self) -> int:
        return self.group.world_size

    def rendezvous_address(self) -> tuple[str, int]:
        """Rank 0's IP and a free port: the process group's store."""
        method = _rpc(TrainWorker.rendezvous_address)
        future = getattr(self.group.actors[0], method).remote()
        return tuple(self.group.wait([future], method)[0])  # type: ignore[return-value]

    def describe(self) -> list[dict[str, object]]:
        return self.group.run(_rpc(TrainWorker.describe))

    def save_checkpoint(self, step_dir: Path) -> None:
        self.group.run(_rpc(TrainWorker.save_checkpoint), str(step_dir))

    def load_checkpoint(self, step_dir: Path, step: int, optimizer_step: int) -> None:
        self.group.run(_rpc(TrainWorker.load_checkpoint), str(step_dir), step, optimizer_step)

    def shutdown(self) -> None:
        """Close every rank's process group, then release the actors (`WorkerGroup.shutdown`)."""
        self.group.shutdown()


class Workers(CommonWorkers):
    """All ranks of one `train` run."""

    def __init__(self, group: WorkerGroup) -> None:
        super().__init__(group)
        # per rank: WirePatches.key of the prompts it generated since the last set_sequences (it holds them)
        self.held_patches: list[set[int]] = [set() for _ in range(group.world_size)]

    def setup(self, spec: WorkerSpec) -> list[dict[str, float]]:
        return self.group.run(_rpc(TrainWorker.setup), spec)

    def generate(
        self, prompts: Sequence[list[RolloutPrompt]], n: int, sampling: SamplingParams, seed: int
    ) -> list[list[RolloutOutput]]:
        """Each rank samples `n` rollouts for its own prompts (and keeps their patches for the step)."""
        for held, rank_prompts in zip(self.held_patches, prompts, strict=True):
            held.update(p.pixel_values.key for p in rank_prompts if isinstance(p.pixel_values, WirePatches))
        per_rank = [(rank_prompts, n, sampling, seed) for rank_prompts in prompts]
        return self.group.run_each(_rpc(TrainWorker.generate), per_rank)

    def set_sequences(
        self,
        sequences: Sequence[list[TrainSequence]],
        experience_count: int | None,
        update_counts: list[int] | None,
    ) -> None:
        """Each rank's sequences for the step, with the micro-batch plan every rank shares.

        Patches a rank holds from `generate` are named (`HeldPatches`), not sent again: each rank
        gets each prompt's patches once per step."""
        sent = [
            [_held_or_sent(s, held) for s in rank_sequences]
            for held, rank_sequences in zip(self.held_patches, sequences, strict=True)
        ]
        self.held_patches = [set() for _ in range(self.world_size)]  # the workers let theirs go too
        per_rank = [(rank_sequences, experience_count, update_counts) for rank_sequences in sent]
        self.group.run_each(_rpc(TrainWorker.set_sequences), per_rank)

    def compute_old_logprobs(self) -> list[dict[str, float]]:
        return self.group.run(_rpc(TrainWorker.compute_old_logprobs))

    def compute_ref_logprobs(self) -> list[dict[str, float]]:
        return self.group.run(_rpc(TrainWorker.compute_ref_logprobs))

    def token_kl(self) -> list[list[np.ndarray]]:
        """Each rank's per-token KL(old || ref) of its sequences, in their order (algorithm.kl_in_reward)."""
        return self.group.run(_rpc(TrainWorker.token_kl))

    def update(
        self, advantages: Sequence[list[float] | list[np.ndarray] | list[Any]], num_updates: int
    ) -> list[dict[str, float]]:
        """Each rank's update metrics (keys from `sophiavl_cli.metrics`), for `metrics.reduce_records`."""
        per_rank = [(rank_advantages, num_updates) for rank_advantages in advantages]
        return self.group.run_each(_rpc(TrainWorker.update), per_rank)

    def sync_weights(self) -> list[float]:
        return self.group.run(_rpc(TrainWorker.sync_weights))
