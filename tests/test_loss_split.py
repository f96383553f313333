"""#12 point 6: the gradient of an optimizer step does not depend on how its mini-batch is split.

The same eight sequences (unequal response lengths) are trained as one micro-batch, as 2 and 4
micro-batches, and over 2 ranks; every loss_agg_mode gives the same gradient within fp32
tolerance. Real TrainWorker, FSDP2 over gloo; the 2-rank case runs in spawned processes.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch.multiprocessing as mp
from worker_fixtures import free_port, split_gradients

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def _rank(rank: int, world_size: int, port: int, model_dir: str, overrides: list[str], out: str) -> None:
    grads = split_gradients(model_dir, rank, world_size, port, overrides)
    if rank == 0:
        with open(out, "wb") as handle:
            pickle.dump(grads, handle)


def _assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for name in a:
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_micro_batch_split_does_not_change_the_gradient(tiny_model_dir, mode):
    base = [f"worker.actor.loss_agg_mode={mode}"]
    whole = split_gradients(
        str(tiny_model_dir),
        0,
        1,
        free_port(),
        [*base, "worker.actor.micro_batch_size_per_device_for_update=8"],
    )
    for size in (4, 2):
        split = split_gradients(
            str(tiny_model_dir),
            0,
            1,
            free_port(),
            [*base, f"worker.actor.micro_batch_size_per_device_for_update={size}"],
        )
        _assert_same(whole, split)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean"])
def test_two_ranks_give_the_one_rank_gradient(tiny_model_dir, tmp_path, mode):
    overrides = [
        f"worker.actor.loss_agg_mode={mode}",
        "worker.actor.micro_batch_size_per_device_for_update=2",
    ]
    one = split_gradients(
        str(tiny_model_dir),
        0,
        1,
        free_port(),
        [*overrides[:1], "worker.actor.micro_batch_size_per_device_for_update=8"],
    )
    out = tmp_path / "grads.pkl"
    mp.spawn(_rank, args=(2, free_port(), str(tiny_model_dir), overrides, str(out)), nprocs=2, join=True)
    with open(out, "rb") as handle:
        _assert_same(one, pickle.load(handle))
