"""A worker that runs out of memory says which recipe knob to turn, in one line.

The worker tests trigger a real allocation failure in the real phase: the tiny model in a world of
one, fed a micro-batch of a 2-token and an 800k-token sequence. The padding makes transformers
build a dense attention mask of about 640 GB, which the CPU allocator refuses at once (the
test is skipped on a machine with that much memory). The rest checks the wording per phase.
"""

from __future__ import annotations

import numpy as np
import psutil
import pytest
import torch
from worker_fixtures import cpu_worker_spec

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.parallel.cluster import _first_line
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.engine.workers.oom import WorkerOutOfMemory, explain_oom, is_out_of_memory, oom_message
from sophiavl_cli.engine.workers.train_worker import TrainWorker

HUGE_RESPONSE = 800_000  # tokens: the padded attention mask needs ~6.4e11 bytes


def _recipe(*overrides: str):
    return load_recipe(
        None,
        [
            "trainer.n_workers_per_node=1",
            "data.rollout_batch_size=2",  # two optimizer steps per step: the old log-prob pass runs
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=2",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.micro_batch_size_per_device_for_experience=2",
            "worker.actor.gradient_checkpointing=false",
            "algorithm.kl_coef=0",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def worker(tiny_model_dir):
    if psutil.virtual_memory().total + psutil.swap_memory().total > 5e11:
        pytest.skip("this machine could try to allocate the 640 GB mask instead of refusing it")
    torch.set_num_threads(1)
    spec = cpu_worker_spec(_recipe(), tiny_model_dir)
    rank0 = TrainWorker(0, 1, {}, 1)
    rank0.setup(spec)
    yield rank0
    rank0.shutdown()


def _oversized(worker: TrainWorker) -> None:
    worker.set_sequences(
        [
            TrainSequence(0, [5, 6, 7], [9] * HUGE_RESPONSE, None, None),
            TrainSequence(1, [5, 6, 7], [9, 10], None, None),
        ]
    )


def test_an_oom_in_the_log_prob_pass_names_the_experience_micro_batch_and_response_length(worker):
    _oversized(worker)
    with pytest.raises(WorkerOutOfMemory) as caught:
        worker.compute_old_logprobs()
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("out of cpu memory in old log-probs: lower ")
    assert "worker.actor.micro_batch_size_per_device_for_experience (now 2)" in message
    assert "data.max_response_length (now " in message and "--resume auto" in message
    assert is_out_of_memory(caught.value.__cause__)  # the allocator's own error is kept as the cause


def test_an_oom_in_the_update_names_the_update_micro_batch_and_gradient_checkpointing(worker):
    _oversized(worker)
    before = [p.detach().clone() for p in worker.policy.parameters()]
    with pytest.raises(WorkerOutOfMemory, match=r"^out of cpu memory in update: ") as caught:
        worker.update([1.0, -1.0], num_updates=1)
    message = str(caught.value)
    assert "worker.actor.micro_batch_size_per_device_for_update (now 2)" in message
    assert "set worker.actor.gradient_checkpointing=true" in message
    assert "micro_batch_size_per_device_for_experience" not in message
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, worker.policy.parameters(), strict=True))


def test_a_numpy_allocation_failure_is_explained_too_and_other_errors_pass_through():
    recipe = _recipe()
    explained = pytest.raises(WorkerOutOfMemory, match=r"in generate: lower worker\.rollout\.n \(now 2\)")
    with explained, explain_oom("generate", recipe, "cpu"):
        np.empty(10**15, dtype=np.float64)  # 8 PB: numpy raises its MemoryError subclass
    with pytest.raises(ValueError, match="shape mismatch"), explain_oom("update", recipe, "cpu"):
        raise ValueError("shape mismatch")
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("expected scalar type Float but found Half"))


def test_with_vllm_the_message_names_its_memory_share_and_sleep_mode_in_one_line_the_driver_keeps():
    recipe = _recipe(
        "worker.rollout.backend=vllm",
        "worker.rollout.enable_sleep_mode=false",
        "data.max_response_length=1024",
    )
    update = oom_message("update", recipe, "cuda")
    assert update == (
        "out of cuda memory in update: lower worker.actor.micro_batch_size_per_device_for_update (now 2), "
        "data.max_response_length (now 1024) or worker.rollout.gpu_memory_utilization (now 0.4), "
        "or set worker.actor.gradient_checkpointing=true or worker.rollout.enable_sleep_mode=true; "
        "`sophiavl plan runs/sophiavl/trust_grpo/recipe.yaml KEY=VALUE ... --gpu NAME` shows what each phase "
        "needs with a change; then resume with --resume auto"
    )
    generate = oom_message("generate", recipe, "cuda")
    assert (
        "worker.rollout.gpu_memory_utilization (now 0.4)" in generate and "worker.rollout.n" not in generate
    )
    # the worker group reports `worker rank R failed during <phase>: <first line of the error>`
    assert _first_line(WorkerOutOfMemory(update)) == update
    with pytest.raises(ValueError, match="unknown phase"):
        oom_message("sync", recipe, "cpu")


def test_with_a_token_budget_the_message_names_the_budget_instead_of_the_row_counts():
    recipe = _recipe("worker.actor.max_tokens_per_micro_batch=4096")
    for phase in ("old log-probs", "update"):
        message = oom_message(phase, recipe, "cuda")
        assert "lower worker.actor.max_tokens_per_micro_batch (now 4096)" in message
        assert "micro_batch_size_per_device" not in message
