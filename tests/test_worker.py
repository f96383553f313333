"""The worker's tensor side on CPU: weight sync, skipped NaN updates, image/text ranks in lock-step.

Real FSDP2 over gloo on the built-in tiny model; the single-rank tests run the worker in this
process (a world of one), the lock-step test runs two ranks as Ray actors.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from worker_fixtures import cpu_worker_spec, free_port

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.parallel.fsdp import full_tensors
from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.schedule import lr_multiplier
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.engine.workers.facade import Workers
from sophiavl_cli.engine.workers.train_worker import TrainWorker, WorkerSpec
from sophiavl_cli.metrics.registry import METRICS

PROMPT = [5, 6, 7, 8, 9]


def _spec(model_dir, world_size: int, port: int, *overrides: str) -> WorkerSpec:
    recipe = load_recipe(
        None,
        [
            f"trainer.n_workers_per_node={world_size}",
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.micro_batch_size_per_device_for_experience=2",
            "worker.actor.gradient_checkpointing=false",
            "worker.actor.optim.lr=1e-2",
            *overrides,
        ],
    )
    return cpu_worker_spec(recipe, model_dir, port=port)


@pytest.fixture
def worker(tiny_model_dir):
    torch.set_num_threads(1)
    rank0 = TrainWorker(0, 1, {}, 1)
    # two optimizer steps per rollout batch: the old log-prob pass runs (on-policy steps skip it)
    rank0.setup(_spec(tiny_model_dir, 1, free_port(), "algorithm.kl_coef=0", "data.rollout_batch_size=2"))
    yield rank0
    rank0.shutdown()


def _rollouts(worker: TrainWorker, seed: int) -> list:
    prompt = RolloutPrompt(index=0, prompt_ids=PROMPT)
    return worker.generate([prompt], 4, SamplingParams(max_tokens=6, return_logprobs=True), seed)


def _train_on(worker: TrainWorker, outputs: list) -> None:
    worker.set_sequences(
        [TrainSequence(i, PROMPT, o.response_ids, None, None) for i, o in enumerate(outputs)]
    )
    worker.compute_old_logprobs()


def test_the_synced_rollout_copy_scores_tokens_like_the_fsdp_policy(worker):
    outputs = _rollouts(worker, seed=3)
    _train_on(worker, outputs)
    for i, out in enumerate(outputs):
        np.testing.assert_allclose(worker._old_logp[i], out.logprobs, atol=1e-5)

    metrics = worker.update([1.0, -1.0, 0.5, -0.5], num_updates=1)
    assert metrics["actor/skipped"] == 0.0 and metrics["actor/grad_norm"] > 0
    copy = dict(worker.rollout.model.named_parameters())
    assert max(float((copy[n] - t).abs().max()) for n, t in full_tensors(worker.policy)) > 0
    worker.sync_weights()
    assert max(float((copy[n] - t).abs().max()) for n, t in full_tensors(worker.policy)) == 0

    outputs = _rollouts(worker, seed=4)
    _train_on(worker, outputs)
    for i, out in enumerate(outputs):
        np.testing.assert_allclose(worker._old_logp[i], out.logprobs, atol=1e-5)


def test_a_nan_loss_skips_the_update_and_leaves_the_weights_unchanged(worker):
    _train_on(worker, _rollouts(worker, seed=5))
    before = {n: t.clone() for n, t in full_tensors(worker.policy)}
    metrics = worker.update([float("nan"), 1.0, -1.0, 0.0], num_updates=1)
    assert metrics["actor/skipped"] == 1.0
    assert all(torch.equal(before[n], t) for n, t in full_tensors(worker.policy))
    assert worker.update([1.0, -1.0, 0.5, -0.5], num_updates=1)["actor/skipped"] == 0.0


def test_update_metrics_over_several_optimizer_steps_follow_the_registry(tiny_model_dir):
    """lr is the last step's (warm-up moves it), skipped the max: one NaN step of two flags the update."""
    torch.set_num_threads(1)
    rank0 = TrainWorker(0, 1, {}, 1)
    spec = _spec(
        tiny_model_dir,
        1,
        free_port(),
        "algorithm.kl_coef=0",
        "worker.actor.optim.lr_warmup_ratio=0.5",
        "data.rollout_batch_size=2",  # the two optimizer steps the update below makes
    )
    rank0.setup(spec)
    try:
        _train_on(rank0, _rollouts(rank0, seed=6))
        metrics = rank0.update([float("nan"), 1.0, -1.0, 0.5], num_updates=2)  # 2 sequences per step
    finally:
        rank0.shutdown()
    total = spec.optimizer_steps_total
    assert rank0.optimizer_step == 2
    assert metrics["actor/lr"] == pytest.approx(
        1e-2 * lr_multiplier(1, total, kind="constant", warmup_ratio=0.5)
    )
    assert metrics["actor/skipped"] == 1.0
    assert set(metrics) <= set(METRICS)


@pytest.mark.ray
def test_a_rank_with_images_and_a_rank_without_stay_in_lockstep(tiny_model_dir):
    from sophiavl_cli.engine.parallel import cluster

    started = cluster.connect(None, num_cpus=2)
    workers = Workers(cluster.WorkerGroup(2, "cpu"))
    try:
        host, port = workers.rendezvous_address()
        spec = _spec(tiny_model_dir, 2, port, "worker.rollout.n=8")
        workers.setup(dataclasses.replace(spec, master_addr=host))
        image_tokens = [json.loads((tiny_model_dir / "config.json").read_text())["image_token_id"]] * 4
        pixels = np.random.default_rng(0).standard_normal((16, 1176)).astype(np.float32)
        grid = np.asarray([[1, 4, 4]], dtype=np.int64)
        with_images = [
            TrainSequence(i, [1, 2, *image_tokens, 3], [10, 11, 12], pixels, grid) for i in range(4)
        ]
        text_only = [
            TrainSequence(4 + i, [1, 2, 3, 4 + i], [10, 11][: 1 + i % 2], None, None) for i in range(4)
        ]
        workers.set_sequences([with_images, text_only], None, None)
        workers.compute_old_logprobs()
        workers.compute_ref_logprobs()
        metrics = workers.update([[1.0, -1.0, 0.5, -0.5], [0.5, -0.5, 1.0, -1.0]], 1)
        assert metrics[0]["actor/grad_norm"] == pytest.approx(
            metrics[1]["actor/grad_norm"]
        )  # one global norm
        assert all(m["actor/skipped"] == 0.0 for m in metrics)
        workers.sync_weights()
    finally:
        workers.shutdown()
        cluster.disconnect(started)


def test_every_typed_rpc_names_a_worker_method():
    """The facade's methods call `TrainWorker` methods of the same name (checked at import, and here)."""
    rpcs = {name for name in vars(Workers) if not name.startswith("_") and callable(getattr(Workers, name))}
    assert rpcs - {"shutdown"} <= set(vars(TrainWorker))
