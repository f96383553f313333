"""The rollout's own log-probs as old log-probs, and token-budget micro-batches, on a real one-rank worker."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_families import ALL
from worker_fixtures import cpu_worker_spec

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.workers.batching import TrainSequence, shared_micro_batch_count
from sophiavl_cli.engine.workers.train_worker import TrainWorker
from sophiavl_cli.models.resolve import resolve_model

PROMPT = [5, 17, 42, 8, 99, 3]
TEMPERATURE = 0.7


def _worker(model_dir, *overrides: str) -> TrainWorker:
    recipe = load_recipe(
        None,
        [
            f"worker.actor.model_path={model_dir}",
            "trainer.n_workers_per_node=1",
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.micro_batch_size_per_device_for_experience=2",
            "worker.actor.gradient_checkpointing=false",
            f"worker.rollout.temperature={TEMPERATURE}",
            "worker.rollout.top_p=1.0",
            "algorithm.kl_coef=0",
            *overrides,
        ],
    )
    worker = TrainWorker(0, 1, {}, 1)
    worker.setup(cpu_worker_spec(recipe, model_dir))
    return worker


def _rollouts(worker: TrainWorker) -> list:
    sampling = SamplingParams(max_tokens=6, temperature=TEMPERATURE, return_logprobs=True)
    prompts = [RolloutPrompt(index=0, prompt_ids=PROMPT), RolloutPrompt(index=1, prompt_ids=PROMPT[:3])]
    return worker.generate(prompts, 2, sampling, seed=11)


def _sequences(outputs: list, *, with_logprobs: bool) -> list[TrainSequence]:
    return [
        TrainSequence(
            index=i,
            prompt_ids=PROMPT if o.prompt_index == 0 else PROMPT[:3],
            response_ids=o.response_ids,
            pixel_values=None,
            image_grid_thw=None,
            old_logprobs=o.logprobs if with_logprobs else None,
        )
        for i, o in enumerate(outputs)
    ]


@pytest.mark.parametrize("name", ALL)
def test_rollout_logprobs_replace_the_old_pass_and_match_a_token_budget_recompute(name):
    """Each family: the hf rollout's sampling log-probs equal the training forward's to 1e-5 (text
    prompts: the forward runs the vision tower on its dummy image, DeepStack mergers included)."""
    torch.set_num_threads(1)
    tiny_model_dir = resolve_model(f"builtin:{name}")
    budget = 2 * (len(PROMPT) + 6)  # two rows of the longest shape: micro-batches of unequal row counts
    worker = _worker(  # two PPO epochs: the old pass runs (one optimizer step would skip it, on-policy)
        tiny_model_dir, f"worker.actor.max_tokens_per_micro_batch={budget}", "worker.actor.ppo_epochs=2"
    )
    try:
        outputs = _rollouts(worker)
        sequences = _sequences(outputs, with_logprobs=False)
        lengths = [(len(s.prompt_ids), len(s.response_ids)) for s in sequences]
        count = shared_micro_batch_count([lengths], budget)
        assert 1 < count < len(sequences)
        worker.set_sequences(sequences, count, [count])
        worker.compute_old_logprobs()
        recomputed = dict(worker._old_logp)
        for i, out in enumerate(outputs):  # hf's temperature-scaled sampling log-probs = the policy's
            np.testing.assert_allclose(recomputed[i], out.logprobs, atol=1e-5)
        metrics = worker.update([1.0, -1.0, 0.5, -0.5], num_updates=1)
        assert metrics["actor/skipped"] == 0.0 and metrics["actor/grad_norm"] > 0
    finally:
        worker.shutdown()

    worker = _worker(tiny_model_dir, "worker.rollout.use_rollout_logprobs=true")
    try:
        outputs = _rollouts(worker)
        worker.set_sequences(_sequences(outputs, with_logprobs=True))
        worker.compute_old_logprobs()
        for i, out in enumerate(outputs):
            np.testing.assert_array_equal(worker._old_logp[i], out.logprobs)
        assert worker.update([1.0, -1.0, 0.5, -0.5], num_updates=1)["actor/approx_kl"] < 1e-8

        worker.set_sequences(_sequences(outputs, with_logprobs=False))
        with pytest.raises(ValueError, match="no log-probs"):
            worker.compute_old_logprobs()
    finally:
        worker.shutdown()
