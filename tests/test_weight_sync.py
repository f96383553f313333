"""Bucketed weight sync: real FSDP2 over gloo on 2 ranks, the real hf rollout copy, the tiny model.

After a sync the rollout copy must hold exactly the policy's full weights whatever the bucket
size (smaller than the largest tensor, between, larger than the whole model), and the number of
all-gathers must be the number of buckets (read from torch's profiler, not from our code).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
    report["bytes"] = _cast_sync(policy, rollout, expected, model_dir, total)
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(report))
    finish()


def _cast_sync(policy: object, fp32_rollout: object, expected: dict, model_dir: str, fp32_bytes: int) -> dict:
    """Bytes the all-gathers receive per sync (counted at torch.distributed), fp32 and into a bf16 rollout."""
    import torch
    import torch.distributed as dist

    from sophiavl_cli.engine.parallel.weight_sync import stream_full_tensors
    from sophiavl_cli.engine.rollout.hf import HFRollout
    from sophiavl_cli.models.loading import load_vl_model

    name = "all_gather_single" if hasattr(dist, "all_gather_single") else "all_gather_into_tensor"
    real = getattr(dist, name)
    received: list[int] = []

    def counting(output: torch.Tensor, *args: object, **kwargs: object) -> object:
        received.append(output.numel() * output.element_size())
        return real(output, *args, **kwargs)

    setattr(dist, name, counting)
    try:
        fp32_rollout.sync_weights(stream_full_tensors(policy, 64 << 20))
        fp32_gathered, received[:] = sum(received), []
        bf16 = HFRollout(
            load_vl_model(model_dir, dtype=torch.bfloat16, device="cpu"), eos_token_ids=[0], pad_token_id=0
        )
        bf16.sync_weights(stream_full_tensors(policy, 64 << 20, torch.bfloat16))
        bf16_gathered = sum(received)
    finally:
        setattr(dist, name, real)
    synced = dict(bf16.model.named_parameters())
    return {
        "fp32_minimum": fp32_bytes,
        "fp32_gathered": fp32_gathered,
        "bf16_minimum": fp32_bytes // 2,
        "bf16_gathered": bf16_gathered,
        "bf16_equal": all(torch.equal(synced[n], t.to(torch.bfloat16)) for n, t in expected.items()),
    }


def _collectives(prof: object) -> int:
    """Collectives the gloo backend ran under the profiler (its `gloo:<op>` events)."""
    return sum(event.count for event in prof.key_averages() if event.key.startswith("gloo:"))


@pytest.fixture(scope="module")
def reports(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Both ranks' reports of one 2-rank run (spawned once for the module's tests)."""
    out = tmp_path_factory.mktemp("sync")
    spawn(_sync_rank, 2, str(tiny_model_dir), str(out))
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_rollout_weights_equal_the_policy_after_a_bucketed_sync(reports: list[dict]) -> None:
    for report in reports:
        runs = list(report["runs"].values())
        assert all(run["equal"] for run in runs)
        assert all(sum(run["buckets"]) == report["params"] for run in runs)
        small, medium, large = runs
        assert large["buckets"] == [report["params"]]  # the whole model in one bucket
        assert len(small["buckets"]) > len(medium["buckets"]) > 1
        assert report["unbucketed"] == report["params"]
        for run in runs:
            assert run["collectives"] == len(run["buckets"])  # one all-gather per bucket


def test_a_bf16_rollout_is_synced_in_bf16_with_half_the_bytes_gathered(reports: list[dict]) -> None:
    """Shards are cast before the all-gather: the bytes received are within 1.1x of the full weights
    in bf16 (padding of the last rank's rows is the rest), half the fp32 sync, and the bf16 copy
    equals the fp32 policy rounded to bf16 exactly."""
    for report in reports:
        counts = report["bytes"]
        assert counts["bf16_equal"]
        assert counts["bf16_minimum"] <= counts["bf16_gathered"] <= 1.1 * counts["bf16_minimum"], counts
        assert counts["fp32_minimum"] <= counts["fp32_gathered"] <= 1.1 * counts["fp32_minimum"], counts
        assert counts["bf16_gathered"] * 2 == counts["fp32_gathered"]
