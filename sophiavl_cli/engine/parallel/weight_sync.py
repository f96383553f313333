"""Full policy tensors for the rollout engine, gathered from FSDP2 shards in byte-bounded buckets.

Gathering each parameter with its own `full_tensor()` costs one collective per parameter (~730
for a 7B model, each paying the collective's latency). Here consecutive parameters are packed
into buckets of at most `bucket_bytes` (full size); each bucket is one all-gather of the ranks'
concatenated shards, unpacked into full tensors and handed on before the next bucket is
gathered, so the extra memory stays about one bucket (a parameter larger than the bucket is a
bucket of its own). verl buckets its weight updates the same way (`update_weights_bucket_megabytes`,
512 by default); ours is the recipe key `worker.rollout.weight_sync_bucket_mb`, also 512.

The rollout engine runs in the compute dtype (bf16 on GPU) while the shards are fp32 master
weights: with `dtype` each shard is cast before the all-gather, so a sync moves half the bytes,
and the full tensors are bit-identical to gathering in fp32 and casting after (the same rounding
of the same values). `keep(name)` names parameters gathered in their own dtype: a LoRA run's
adapters and the base weights they merge into, so the merged view is computed in fp32 as before.

FSDP2 shards a parameter on dim 0 with `torch.chunk` semantics (chunks of ceil(rows / world),
trailing ranks possibly short or empty); each rank pads its shard to the chunk size so every
rank sends the same number of elements. Parameters that are not FSDP2 shards (plain tensors,
other placements) are passed through or gathered on their own.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor, Shard


@dataclass(frozen=True)
class _Sharded:
    name: str
    local: torch.Tensor  # this rank's shard, [rows_here, ...]
    shape: torch.Size  # full shape
    chunk_rows: int  # rows per rank after padding

    @property
    def row_numel(self) -> int:
        return math.prod(self.shape[1:])

    @property
    def padded_numel(self) -> int:
        return self.chunk_rows * self.row_numel


def _row_shard(name: str, data: DTensor) -> _Sharded | None:
    """The dim-0 shard FSDP2 made of `data`, or None for any other layout (gathered on its own)."""
    mesh = data.device_mesh
    if mesh.ndim != 1 or tuple(data.placements) != (Shard(0),) or data.dim() == 0:
        return None
    world = mesh.size()
    rows = data.shape[0]
    chunk_rows = -(-rows // world)
    rank = mesh.get_local_rank()
    expected = max(0, min(chunk_rows, rows - rank * chunk_rows))
    local = data.to_local()
    if local.shape[0] != expected:  # not torch.chunk's layout: let DTensor gather it
        return None
    return _Sharded(name, local, data.shape, chunk_rows)


def _all_gather(output: torch.Tensor, shard: torch.Tensor, group: dist.ProcessGroup) -> None:
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # renamed in torch 2.13
    gather(output, shard, group=group)


def _gather_bucket(
    bucket: list[_Sharded], group: dist.ProcessGroup, dtype: torch.dtype
) -> list[tuple[str, torch.Tensor]]:
    """One all-gather for the whole bucket, in `dtype`; returns full tensors in bucket order."""
    world = dist.get_world_size(group)
    device = bucket[0].local.device
    per_rank = sum(item.padded_numel for item in bucket)
    send = torch.zeros(per_rank, dtype=dtype, device=device)  # [per_rank]
    offset = 0
    for item in bucket:
        flat = item.local.reshape(-1)
        send[offset : offset + flat.numel()].copy_(flat)  # casts to `dtype`
        offset += item.padded_numel
    received = torch.empty(world * per_rank, dtype=dtype, device=device)  # [world * per_rank]
    _all_gather(received, send, group)
    by_rank = received.view(world, per_rank)  # [world, per_rank]
    out = []
    offset = 0
    for item in bucket:
        rows = item.shape[0]
        pieces = []
        for r in range(world):
            take = max(0, min(item.chunk_rows, rows - r * item.chunk_rows)) * item.row_numel
            pieces.append(by_rank[r, offset : offset + take])
        out.append((item.name, torch.cat(pieces).view(item.shape)))
        offset += item.padded_numel
    return out


def full_tensor_buckets(
    model: nn.Module,
    bucket_bytes: int,
    dtype: torch.dtype | None = None,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of (name, full tensor), every parameter exactly once, in `dtype` (None: as stored)
    except those `keep` names.

    Collective: every rank must iterate to the end. Each bucket costs one all-gather (none when
    it holds only unsharded tensors).
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
    pending: list[_Sharded] = []
    pending_bytes = 0
    key: tuple[object, ...] | None = None  # (group, dtype, device): what one all-gather can mix
    group: dist.ProcessGroup | None = None
    send_dtype: torch.dtype | None = None

    def flush() -> list[tuple[str, torch.Tensor]]:
        nonlocal pending, pending_bytes
        assert group is not None and send_dtype is not None
        done = _gather_bucket(pending, group, send_dtype)
        pending, pending_bytes = [], 0
        return done

    for name, param in model.named_parameters():
        data = param.data
        target = data.dtype if dtype is None or (keep is not None and keep(name)) else dtype
        if not isinstance(data, DTensor):
            yield [(name, data.to(target))]
            continue
        item = _row_shard(name, data)
        if item is None:
            if pending:
                yield flush()
            yield [(name, data.to(target).full_tensor())]
            continue
        item_group = data.device_mesh.get_group()
        item_key = (item_group, target, item.local.device)
        size = item.padded_numel * data.device_mesh.size() * target.itemsize
        if pending and (item_key != key or pending_bytes + size > bucket_bytes):
            yield flush()
        key, group, send_dtype = item_key, item_group, target
        pending.append(item)
        pending_bytes += size
    if pending:
        yield flush()


def stream_full_tensors(
    model: nn.Module,
    bucket_bytes: int,
    dtype: torch.dtype | None = None,
    keep: Callable[[str], bool] | None = None,
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) pairs for `RolloutEngine.sync_weights`, gathered bucket by bucket."""
    for bucket in full_tensor_buckets(model, bucket_bytes, dtype, keep):
        yield from bucket
