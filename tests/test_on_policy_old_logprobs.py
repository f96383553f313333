"""On-policy steps skip the old log-prob pass: the update's own forward pass gives the same loss and gradient.

With one optimizer step per rollout batch (ppo_epochs 1), the policy that would score the batch in
the old pass is the one the update runs, so the old log-probs are the update's own, detached (as
in verl's and TRL's on-policy path). A real one-rank worker on the tiny model. The comparison
also guards the separate pass: FSDP2 leaves the root gathered after it, and without the reshard
in `TrainWorker._logprobs` the next update's embedding gradient came out wrong.
"""

from __future__ import annotations

import pytest
import torch
from test_rollout_logprobs import _rollouts, _sequences, _worker
from torch.distributed.tensor import DTensor

from sophiavl_cli.engine.workers.batching import with_advantage


def _grads(model: torch.nn.Module) -> list[torch.Tensor]:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    return [(g.to_local() if isinstance(g, DTensor) else g).clone() for g in grads]


def test_an_on_policy_step_takes_old_logprobs_from_the_update_with_the_same_loss_and_gradient(tiny_model_dir):
    torch.set_num_threads(1)
    worker = _worker(tiny_model_dir)  # rollout batch = global batch, one PPO epoch: one optimizer step
    try:
        outputs = _rollouts(worker)
        worker.set_sequences(_sequences(outputs, with_logprobs=False))
        worker.compute_old_logprobs()
        assert worker._old_logp == {}  # no separate forward pass ran
        sequences = [
            with_advantage(s, a) for s, a in zip(worker._sequences, [1.0, -1.0, 0.5, -0.5], strict=True)
        ]
        (mb,) = worker._micro_batches(sequences, len(sequences), None)

        worker.policy.zero_grad(set_to_none=True)
        on_policy, on_metrics = worker._micro_batch_loss(mb)
        on_policy.backward()
        from_update = _grads(worker.policy)

        with torch.no_grad():  # as compute_old_logprobs runs it
            worker._old_logp = worker._logprobs(worker.policy)  # what the old pass would have given
        worker.policy.zero_grad(set_to_none=True)
        recomputed, metrics = worker._micro_batch_loss(mb)
        recomputed.backward()
        from_pass = _grads(worker.policy)

        torch.testing.assert_close(on_policy, recomputed, atol=1e-6, rtol=1e-5)
        assert len(from_update) == len(from_pass) > 0
        for a, b in zip(from_update, from_pass, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
        assert abs(on_metrics["approx_kl"]) < 1e-12 and abs(metrics["approx_kl"]) < 1e-6
        worker._old_logp = {}
        with pytest.raises(ValueError, match="one optimizer step per batch"):
            worker.update([1.0, -1.0, 0.5, -0.5], num_updates=2)  # would need the skipped pass
    finally:
        worker.shutdown()

    worker = _worker(tiny_model_dir, "worker.actor.ppo_epochs=2")  # the second epoch is off-policy
    try:
        worker.set_sequences(_sequences(_rollouts(worker), with_logprobs=False))
        worker.compute_old_logprobs()
        assert sorted(worker._old_logp) == [0, 1, 2, 3]
    finally:
        worker.shutdown()
