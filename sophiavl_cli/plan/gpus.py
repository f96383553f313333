"""GPU names -> memory, and the margin a plan keeps free on each.

Memory is what the driver reports as the device's total (`nvidia-smi`'s MiB, the number
`torch.cuda.get_device_properties(i).total_memory` gives): what vLLM's `gpu_memory_utilization`
multiplies and what allocations must fit in. Names are matched without case, spaces or dashes; a
card not listed is given with `--gpu-memory GIB`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sophiavl_cli.errors import UserError

MIB = 2**20
GIB = 2**30

# name -> total memory in MiB as the driver reports it (80 GB cards show 79.6-80 GiB, not 80 GB)
GPU_MIB: dict[str, int] = {
    "A100-40GB": 40960,
    "A100-80GB": 81920,
    "H100-80GB": 81559,
    "H200-141GB": 143771,
    "L40S-48GB": 46068,
    "RTX4090-24GB": 24564,
    "B200-180GB": 183359,
}
# short names that mean one card
_ALIASES = {
    "H100": "H100-80GB",
    "H200": "H200-141GB",
    "L40S": "L40S-48GB",
    "RTX4090": "RTX4090-24GB",
    "4090": "RTX4090-24GB",
    "B200": "B200-180GB",
}

CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspaces and NCCL buffers of one process
FRAGMENTATION = 0.05  # of the card: blocks the caching allocator holds but cannot reuse


@dataclass(frozen=True)
class Gpu:
    name: str
    total_bytes: int

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB

    @property
    def margin_bytes(self) -> int:
        """Kept free of the plan: the process's CUDA context plus allocator fragmentation."""
        return int(CONTEXT_GIB * GIB + FRAGMENTATION * self.total_bytes)

    @property
    def usable_bytes(self) -> int:
        return self.total_bytes - self.margin_bytes


def _key(name: str) -> str:
    return name.upper().replace(" ", "").replace("-", "").replace("_", "")


def gpu_by_name(name: str) -> Gpu:
    """A card of the table; a `UserError` listing the names otherwise."""
    wanted = _key(name)
    for known, mib in GPU_MIB.items():
        if _key(known) == wanted:
            return Gpu(known, mib * MIB)
    for alias, known in _ALIASES.items():
        if _key(alias) == wanted:
            return Gpu(known, GPU_MIB[known] * MIB)
    raise UserError(
        f"--gpu {name}: unknown card; use one of {', '.join(GPU_MIB)} or give its memory with --gpu-memory GIB"
    )


def gpu_with_memory(gib: float) -> Gpu:
    if gib <= 0:
        raise UserError(f"--gpu-memory {gib}: must be a positive number of GiB")
    return Gpu(f"{gib:g} GiB", int(gib * GIB))
