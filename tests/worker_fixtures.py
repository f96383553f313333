"""Building a single-process TrainWorker on CPU for worker-level tests (no Ray, gloo on loopback)."""

from __future__ import annotations

import socket
from pathlib import Path

from sophiavl_cli.config import Recipe
from sophiavl_cli.engine.worker import WorkerSpec


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
