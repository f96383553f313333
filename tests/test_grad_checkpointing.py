"""FSDP2 with gradient checkpointing (the fullsets default) trains exactly like without it, at world size 2.

Each of two gloo ranks runs the real `TrainWorker` twice on the built-in tiny model: one optimizer
step with `worker.actor.gradient_checkpointing` on, one with it off, from the same weights and the
same sequences (an image row on rank 0, text rows on rank 1, two micro-batches each). Recomputing
activations in backward must change nothing but memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from worker_fixtures import cpu_worker_spec, free_port

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.parallel.fsdp import full_tensors
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.engine.workers.train_worker import TrainWorker


def _sequences(rank: int, image_token_id: int) -> list[TrainSequence]:
    rng = np.random.default_rng(rank)
    if rank == 0:
        pixels = rng.standard_normal((16, 1176)).astype(np.float32)
        grid = np.asarray([[1, 4, 4]], dtype=np.int64)
        return [
            TrainSequence(i, [1, 2, *[image_token_id] * 4, 3], [10 + i, 11, 12, 13][: 2 + i], pixels, grid)
            for i in range(4)
        ]
    return [TrainSequence(4 + i, [1, 2, 3, 4 + i], [20, 21, 22][: 1 + i % 3], None, None) for i in range(4)]


def one_step(rank: int, world_size: int, ports: tuple[int, int], model_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    image_token_id = json.loads((Path(model_dir) / "config.json").read_text())["image_token_id"]
    results = {}
    for checkpointing, rendezvous in zip((True, False), ports, strict=True):
        recipe = load_recipe(
            None,
            [
                f"trainer.n_workers_per_node={world_size}",
                "data.rollout_batch_size=1",
                "worker.actor.global_batch_size=1",
                "worker.rollout.n=8",
                "worker.actor.micro_batch_size_per_device_for_update=2",
                "worker.actor.micro_batch_size_per_device_for_experience=2",
                f"worker.actor.gradient_checkpointing={str(checkpointing).lower()}",
                "worker.actor.optim.lr=1e-2",
                "algorithm.kl_coef=0.1",
            ],
        )
        worker = TrainWorker(rank, world_size, {}, 1)
        worker.setup(cpu_worker_spec(recipe, model_dir, port=rendezvous))
        assert worker.policy.model.language_model.gradient_checkpointing is checkpointing
        worker.set_sequences(_sequences(rank, image_token_id))
        worker.compute_old_logprobs()
        worker.compute_ref_logprobs()
        metrics = worker.update([1.0, -1.0, 0.5, -0.5], num_updates=1)
        weights = {name: tensor.clone() for name, tensor in full_tensors(worker.policy)}
        worker.shutdown()
        results[checkpointing] = (metrics, weights)
    if rank == 0:
        torch.save(results, Path(out) / "results.pt")


@pytest.mark.slow
def test_a_step_with_gradient_checkpointing_equals_the_step_without_at_world_size_two(
    tiny_model_dir, tmp_path
):
    import torch.multiprocessing as mp

    ports = (free_port(), free_port())
    mp.spawn(one_step, args=(2, ports, str(tiny_model_dir), str(tmp_path)), nprocs=2, join=True)
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    (with_ckpt, weights_ckpt), (without, weights_plain) = results[True], results[False]
    assert with_ckpt["actor/skipped"] == without["actor/skipped"] == 0.0
    for key in ("actor/loss", "actor/grad_norm", "actor/kl", "actor/entropy"):
        assert with_ckpt[key] == pytest.approx(without[key], rel=1e-5, abs=1e-7), key
    assert with_ckpt["actor/grad_norm"] > 0
    assert weights_ckpt.keys() == weights_plain.keys()
    for name, tensor in weights_plain.items():
        torch.testing.assert_close(weights_ckpt[name], tensor, rtol=1e-5, atol=1e-6)
