"""Process group and FSDP2 sharding for the workers.

One process group per run: gloo on CPU, NCCL on GPU, with a short timeout so a collective
waiting on a dead peer fails in seconds instead of hanging (the driver sees the dead actor
first and ends the run). The policy and the reference model are sharded with
`torch.distributed.fsdp.fully_shard`: one unit per transformer block (the classes the model
lists in `_no_split_modules`: decoder layers and vision blocks for Qwen2.5-VL), then the root.
FSDP2 keeps parameter names unchanged, so state dicts, DCP checkpoints and weight sync all use
the transformers names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

STORE_TIMEOUT_S = 600.0  # ranks joining the store: model loading on a busy node can take minutes


def host_store(world_size: int) -> dist.TCPStore:
    """Rank 0's rendezvous store on a port the OS picks and this process keeps.

    Binding the store itself closes the race of "find a free port, close it, bind it later":
    nothing else can take the port between the choice and the use. The driver reads `port`
    and hands it to the other ranks, which connect as clients.
    """
    return dist.TCPStore(
        "0.0.0.0",
        0,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=STORE_TIMEOUT_S),
        wait_for_workers=False,
    )


def init_process_group(
    rank: int,
    world_size: int,
    master_addr: str,
    master_port: int,
    device: str,
    timeout_s: float,
    store: dist.Store | None = None,
) -> None:
    """Join the run's process group through rank 0's store (`host_store`), or one made here at the port.

    The torchrun variables are set too (vLLM's external launcher reads them). `LOCAL_RANK` is 0 on
    every rank, set rather than defaulted: Ray shows each worker actor only its own GPU, as
    cuda:0, whatever a launcher around Ray exported.
    """
    os.environ.update(
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",
    )
    if store is None:
        store = dist.TCPStore(
            master_addr,
            master_port,
            world_size,
            is_master=rank == 0,
            timeout=timedelta(seconds=max(timeout_s, STORE_TIMEOUT_S)),
        )
    backend = "nccl" if device == "cuda" else "gloo"
    dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s)
    )


def close_process_group() -> None:
    """Barrier, then destroy: destroying while a peer is still mid-collective aborts sporadically."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def block_modules(model: nn.Module) -> list[nn.Module]:
    """The modules to shard one by one: instances of the classes the model marks as unsplittable."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return [m for m in model.modules() if type(m).__name__ in names and m is not model]


def shard_model(
    model: nn.Module, *, param_dtype: torch.dtype | None = None, full_shard: bool = True
) -> nn.Module:
    """FSDP2-shard `model` in place over the default process group: each block, then the root.

    `param_dtype` (bf16 on GPU) is the compute dtype; the sharded master weights and the gradient
    reduction stay in the dtype the model was loaded in (fp32). `full_shard=False` (ZeRO-2, FSDP1's
    SHARD_GRAD_OP): a block's gathered parameters stay after its forward for the backward, so a
    micro-batch all-gathers each block once instead of twice; gradients and optimizer state stay
    sharded. The numbers are the same either way (the same gathered values feed the same ops).
    """
    policy = (
        MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else None
    )
    kwargs: dict[str, object] = {"reshard_after_forward": full_shard}
    if policy is not None:
        kwargs["mp_policy"] = policy
    for module in block_modules(model):
        fully_shard(module, **kwargs)
    fully_shard(model, **kwargs)
    return model


def load_sharded(
    model_dir: str | Path,
    *,
    dtype: torch.dtype,
    device: torch.device,
    param_dtype: torch.dtype | None = None,
    prepare: Callable[[nn.Module], None] | None = None,
    full_shard: bool = True,
) -> nn.Module:
    """Load a checkpoint once (rank 0, host memory) and give every rank its FSDP2 shard of it.

    Every other rank builds the model on the meta device (no memory), shards it, allocates only
    its shard on `device` and receives the weights from rank 0 (`broadcast_from_rank0`), as verl
    does: host RAM at start is one full copy per job instead of one per rank (8 x ~33 GB fp32 for
    a 7B policy on an 8-GPU node). Buffers that are not in the state dict (rotary frequencies)
    are broadcast too. `prepare(model)` runs before sharding on every rank (gradient
    checkpointing, frozen parameters, LoRA adapters).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from sophiavl_cli.models.loading import load_vl_model, meta_vl_model

    rank0 = dist.get_rank() == 0
    if rank0:
        model = load_vl_model(model_dir, dtype=dtype, device="cpu", attn_device=device)
    else:
        model = meta_vl_model(model_dir, dtype=dtype, attn_device=device)
    if prepare is not None:
        prepare(model)
    # after `prepare`: parameters it adds (LoRA adapters, initialised on rank 0) are broadcast too
    full = model.state_dict() if rank0 else {}
    shard_model(model, param_dtype=param_dtype, full_shard=full_shard)
    if rank0:
        model.to(device)
    else:
        model.to_empty(device=device)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full, options=options)
    del full
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    return model


@contextmanager
def gathered_through(model: nn.Module, count: int, *, keep: bool) -> Iterator[Callable[[int], None]]:
    """Micro-batch `i` of `count` calls the yielded `before(i)` before its backward.

    With `keep` (`worker.actor.fsdp.full_shard=false`), parameters gathered by the first
    micro-batch's forward stay gathered through the optimizer step's backward passes and are
    resharded after the last one: one all-gather per block per optimizer step instead of one (or
    two) per micro-batch. Gradients are still reduce-scattered after every micro-batch, in the same
    order, so the numbers do not change. Without `keep` it does nothing.
    """
    from torch.distributed.fsdp import FSDPModule

    active = keep and isinstance(model, FSDPModule)

    def before(i: int) -> None:
        if active:
            model.set_reshard_after_backward(i == count - 1)  # type: ignore[union-attr]

    try:
        yield before
    finally:
        if active:
            model.set_reshard_after_backward(True)  # type: ignore[union-attr]
            reshard_all(model)


def reshard_after_no_grad(model: nn.Module) -> None:
    """Reshard after a no-grad forward pass.

    FSDP2 leaves the root module's parameters gathered after a forward; if the next (gradient)
    forward starts from that state, the root's gradients come out wrong (embeddings off by O(0.1)
    on the tiny model, growing with each such pass). Every no-grad pass on a sharded model that is
    later trained ends here.
    """
    reshard_all(model)


def reshard_all(model: nn.Module) -> None:
    """Reshard the root and every block (a block keeps its gathered parameters after a forward when
    `full_shard=false`; `FSDPModule.reshard` acts on one module only)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def full_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, full tensor) for every parameter, gathering one at a time (collective: all ranks iterate)."""
    for name, param in model.named_parameters():
        data = param.data
        yield name, data.full_tensor() if isinstance(data, DTensor) else data


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip gradients by their global norm; returns the norm before clipping as a float.

    With FSDP2 the norm comes back as a DTensor: `full_tensor()` makes it a plain tensor first.
    """
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    return float(norm.item())


def node_ip() -> str:
    """This process's node IP as Ray sees it (the address other ranks reach it at)."""
    try:
        import ray

        return str(ray.util.get_node_ip_address())
    except Exception:  # outside Ray (unit use): loopback
        return "127.0.0.1"
