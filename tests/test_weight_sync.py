"""Bucketed weight sync: real FSDP2 over gloo on 2 ranks, the real hf rollout copy, the tiny model.

After a sync the rollout copy must hold exactly the policy's full weights whatever the bucket
size (smaller than the largest tensor, between, larger than the whole model), and the number of
all-gathers must be the number of buckets (read from torch's profiler, not from our code).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fsdp_fixtures import finish, init_gloo, spawn


def _sync_rank(rank: int, world_size: int, port: int, model_dir: str, out_dir: str) -> None:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from sophiavl_cli.engine.parallel import fsdp
    from sophiavl_cli.engine.parallel.weight_sync import full_tensor_buckets, stream_full_tensors
    from sophiavl_cli.engine.rollout.hf import HFRollout
    from sophiavl_cli.models.loading import load_vl_model

    init_gloo(rank, world_size, port)
    policy = load_vl_model(model_dir, dtype=torch.float32, device="cpu")
    generator = torch.Generator().manual_seed(3)  # the same nudge on both ranks: a policy unlike the file
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.01 * torch.randn(param.shape, generator=generator))
    fsdp.shard_model(policy)
    rollout = HFRollout(
        load_vl_model(model_dir, dtype=torch.float32, device="cpu"), eos_token_ids=[0], pad_token_id=0
    )
    expected = {name: tensor.clone() for name, tensor in fsdp.full_tensors(policy)}  # per-parameter gather
    sizes = {name: t.numel() * t.element_size() for name, t in expected.items()}
    largest, total = max(sizes.values()), sum(sizes.values())  # bytes
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        rollout.sync_weights(fsdp.full_tensors(policy))  # the unbucketed way: one gather per parameter
    report = {"params": len(expected), "unbucketed": _collectives(prof), "runs": {}}
    for bucket_bytes in (largest // 3, largest + 1, 2 * total):
        with torch.no_grad():
            for param in rollout.model.parameters():
                param.zero_()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            rollout.sync_weights(stream_full_tensors(policy, bucket_bytes))
        synced = dict(rollout.model.named_parameters())
        report["runs"][str(bucket_bytes)] = {
            "equal": all(torch.equal(synced[name], tensor) for name, tensor in expected.items()),
            "buckets": [len(b) for b in full_tensor_buckets(policy, bucket_bytes)],
            "collectives": _collectives(prof),
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finish()


def _collectives(prof: object) -> int:
    """Collectives the gloo backend ran under the profiler (its `gloo:<op>` events)."""
    return sum(event.count for event in prof.key_averages() if event.key.startswith("gloo:"))


def test_rollout_weights_equal_the_policy_after_a_bucketed_sync(tiny_model_dir: Path, tmp_path: Path) -> None:
    spawn(_sync_rank, 2, str(tiny_model_dir), str(tmp_path))
    for rank in range(2):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        runs = list(report["runs"].values())
        assert all(run["equal"] for run in runs)
        assert all(sum(run["buckets"]) == report["params"] for run in runs)
        small, medium, large = runs
        assert large["buckets"] == [report["params"]]  # the whole model in one bucket
        assert len(small["buckets"]) > len(medium["buckets"]) > 1
        assert report["unbucketed"] == report["params"]
        for run in runs:
            assert run["collectives"] == len(run["buckets"])  # one all-gather per bucket
