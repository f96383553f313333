"""Building a single-process TrainWorker on CPU for worker-level tests (no Ray, gloo on loopback)."""

from __future__ import annotations

import socket
from pathlib import Path

from sophiavl_cli.config import Recipe
from sophiavl_cli.engine.workers.train_worker import WorkerSpec


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_worker_spec(recipe: Recipe, model_dir: Path | str, *, port: int | None = None) -> WorkerSpec:
    """A rank's spec on CPU; the reference model is loaded only when the recipe's KL needs it."""
    return WorkerSpec(
        recipe=recipe,
        model_dir=str(model_dir),
        master_addr="127.0.0.1",
        master_port=port if port is not None else free_port(),
        device="cpu",
        optimizer_steps_total=10,
        need_ref=recipe.algorithm.use_kl_loss and recipe.algorithm.kl_coef > 0,
        eos_token_ids=[0],
        pad_token_id=0,
        collective_timeout_s=60,
    )


def split_sequences() -> list[tuple[list[int], list[int], float]]:
    """Eight (prompt, response, advantage) rows with unequal response lengths, for split tests."""
    rows = []
    for i in range(8):
        prompt = [5 + i % 3, 6, 7, 8]
        response = [10 + (i * 7 + t) % 50 for t in range(1 + (i * 5) % 7)]
        rows.append((prompt, response, float((-1) ** i * (0.5 + 0.25 * i))))
    return rows


def split_gradients(
    model_dir: str, rank: int, world_size: int, port: int, overrides: list[str]
) -> dict[str, object]:
    """Full gradients of one optimizer step over `split_sequences` on this rank's share (collective).

    The optimizer's `step` is replaced by a recorder, so the weights stay put and the gradient
    that the real `TrainWorker.update` path accumulated is what comes back.
    """
    import numpy as np
    import torch
    from torch.distributed.tensor import DTensor

    from sophiavl_cli.config import load_recipe
    from sophiavl_cli.engine.workers.batching import TrainSequence
    from sophiavl_cli.engine.workers.train_worker import TrainWorker

    torch.set_num_threads(1)
    recipe = load_recipe(
        None,
        [
            f"trainer.n_workers_per_node={world_size}",
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=8",
            "worker.actor.micro_batch_size_per_device_for_experience=8",
            "worker.actor.gradient_checkpointing=false",
            "worker.actor.max_grad_norm=1e9",
            "worker.actor.entropy_coef=0.01",
            "data.max_response_length=8",
            "algorithm.kl_coef=0",
            *overrides,
        ],
    )
    worker = TrainWorker(rank, world_size, {}, 1)
    worker.setup(cpu_worker_spec(recipe, model_dir, port=port))
    per_rank = 8 // world_size
    rows = split_sequences()[rank * per_rank : (rank + 1) * per_rank]
    sequences = [TrainSequence(rank * per_rank + i, p, r, None, None) for i, (p, r, _) in enumerate(rows)]
    worker.set_sequences(sequences)
    worker.compute_old_logprobs()
    grads: dict[str, np.ndarray] = {}

    def record(*args: object, **kwargs: object) -> None:
        for name, param in worker.policy.named_parameters():
            if param.grad is not None:
                grad = param.grad.full_tensor() if isinstance(param.grad, DTensor) else param.grad
                grads[name] = grad.detach().cpu().numpy().copy()

    worker.optimizer.step = record  # type: ignore[method-assign]
    worker.update([a for _, _, a in rows], num_updates=1)
    worker.shutdown()
    return grads
