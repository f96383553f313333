"""Pure bf16 (`worker.actor.master_dtype=bf16`): Kahan-compensated AdamW keeps small updates; a worker
trains in bf16 on CPU and a checkpoint resumes it bit for bit.
"""

from __future__ import annotations

import pytest
import torch
from worker_fixtures import cpu_worker_spec

from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.parallel.fsdp import full_tensors
from sophiavl_cli.engine.workers.batching import TrainSequence
from sophiavl_cli.engine.workers.kahan_adamw import KahanAdamW
from sophiavl_cli.engine.workers.train_worker import TrainWorker
from sophiavl_cli.errors import UserError
from sophiavl_cli.metrics.keys import ACTOR_LOSS, ACTOR_SKIPPED


def _descend(optimizer_cls, dtype: torch.dtype, steps: int = 200, lr: float = 1e-3) -> torch.Tensor:
    """Minimise sum(w) from w = 1: every AdamW step moves each weight by about lr."""
    weight = torch.nn.Parameter(torch.ones(64, dtype=dtype))
    optimizer = optimizer_cls([weight], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        optimizer.zero_grad()
        weight.sum().backward()
        optimizer.step()
    return weight.detach().float()


def test_compensated_bf16_updates_follow_fp32_where_plain_bf16_adamw_does_not_move() -> None:
    reference = _descend(torch.optim.AdamW, torch.float32)  # 1 - 200 x 1e-3 = 0.8
    plain = _descend(torch.optim.AdamW, torch.bfloat16)  # 1e-3 is below half of bf16's spacing at 1.0
    compensated = _descend(KahanAdamW, torch.bfloat16)
    assert torch.equal(plain, torch.ones(64))
    assert (compensated - reference).abs().max() <= 2**-7  # within two bf16 steps (2^-8 at 0.8) of fp32


def test_pure_bf16_with_fp32_compute_is_rejected_with_the_fix() -> None:
    with pytest.raises(UserError, match=r"worker\.actor\.dtype=bf16"):
        load_recipe(None, ["worker.actor.master_dtype=bf16", "worker.actor.dtype=fp32"])


def _sequences() -> list[TrainSequence]:
    return [
        TrainSequence(i, [5, 6, 7, 8 + i], [10 + i, 11, 12, 13][: 2 + i % 3], None, None) for i in range(4)
    ]


def _step(worker: TrainWorker, advantages: list[float]) -> dict[str, float]:
    worker.set_sequences(_sequences())
    worker.compute_old_logprobs()
    worker.compute_ref_logprobs()
    return worker.update(advantages, num_updates=1)


def _weights(worker: TrainWorker) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in full_tensors(worker.policy)}


def test_a_pure_bf16_worker_trains_on_cpu_and_resumes_from_its_checkpoint_bit_for_bit(
    tiny_model_dir, tmp_path
) -> None:
    torch.set_num_threads(1)
    recipe = load_recipe(
        None,
        [
            "trainer.n_workers_per_node=1",
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=2",
            "worker.actor.master_dtype=bf16",
            "worker.actor.optim.lr=1e-3",
        ],
    )
    worker = TrainWorker(0, 1, {}, 1)
    worker.setup(cpu_worker_spec(recipe, tiny_model_dir))
    try:
        assert {p.dtype for p in worker.policy.parameters()} == {torch.bfloat16}
        before = _weights(worker)
        first = _step(worker, [1.0, -1.0, 0.5, -0.5])
        assert first[ACTOR_SKIPPED] == 0.0 and torch.isfinite(torch.tensor(first[ACTOR_LOSS]))
        assert any(not torch.equal(before[n], t) for n, t in _weights(worker).items())
        state = next(iter(worker.optimizer.state.values()))
        assert {state[k].dtype for k in ("exp_avg", "exp_avg_sq", "compensation")} == {torch.bfloat16}

        worker.save_checkpoint(str(tmp_path / "step_1"))
        saved = _weights(worker)
        after_save = _step(worker, [-0.5, 0.5, 1.0, -1.0])
        continued = _weights(worker)
        worker.load_checkpoint(str(tmp_path / "step_1"), step=1, optimizer_step=1)
        assert all(torch.equal(saved[n], t) for n, t in _weights(worker).items())
        after_load = _step(worker, [-0.5, 0.5, 1.0, -1.0])
        assert after_load[ACTOR_LOSS] == after_save[ACTOR_LOSS]
        assert all(torch.equal(continued[n], t) for n, t in _weights(worker).items())
    finally:
        worker.shutdown()
