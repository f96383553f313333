"""Where `sophiavl merge` reads full tensors from: a sophiavl DCP checkpoint or the released layout.

Both readers run in one plain process with no process group, whatever world size wrote the
checkpoint, and hand out a few tensors at a time, so merging a 7B model needs about one output
shard of memory rather than the whole model.

- `DcpSource`: the `model.*` entries of `global_step_N/dcp/` (written by `save_sharded`). DCP keeps
  every shard's global offsets in `.metadata`, so loading into a full-size empty tensor with
  `no_dist=True` reassembles it.
- `HfFolderSource`: the safetensors of a Hugging Face model folder, upcast to float32 as the
  trainer loads them: the frozen base a LoRA checkpoint (adapter only) is merged into.
  `ModuleLayoutSource` shows such a folder's MoE experts in the trainer's layout (one fused
  tensor, `models/hub_layout.py`), the layout every other source gives and the writer expects.
- `ReleasedSource`: the released SophiaVL-R1 / EasyR1 `actor/model_world_size_W_rank_R.pt` files,
  one FSDP state dict of DTensors per rank. A `Shard(d)` tensor is the concatenation of the ranks'
  local pieces along d, in mesh order; a `Replicate` one is any rank's copy; a plain tensor is
  taken as replicated. Files are memory-mapped and read with `weights_only=True`.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.tensor import DTensor, Replicate, Shard

from sophiavl_cli.engine.checkpoint.sharded import single_process_ok
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.families import Family
from sophiavl_cli.models.hub_layout import module_parts, module_shape, module_tensor

MODEL_SECTION = "model."  # save_sharded stores {"model": ..., "optimizer": ...}
RELEASED_FILE_RE = re.compile(r"^model_world_size_(\d+)_rank_(\d+)\.pt$")


@dataclass(frozen=True)
class TensorInfo:
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        count = 1
        for size in self.shape:
            count *= size
        return count * self.dtype.itemsize


class TensorSource(Protocol):
    """Full tensors of a checkpoint, by parameter name."""

    label: str

    def tensors(self) -> dict[str, TensorInfo]: ...

    def load(self, names: list[str]) -> dict[str, torch.Tensor]: ...


class DcpSource:
    """The model section of a DCP checkpoint folder (`.metadata` + `*.distcp`)."""

    label = "sophiavl DCP checkpoint"

    def __init__(self, dcp_dir: Path) -> None:
        self.dcp_dir = Path(dcp_dir)
        if not (self.dcp_dir / ".metadata").is_file():
            raise UserError(f"{self.dcp_dir}: no .metadata; this is not a complete DCP checkpoint")
        metadata = FileSystemReader(str(self.dcp_dir)).read_metadata()
        self._infos: dict[str, TensorInfo] = {
            key[len(MODEL_SECTION) :]: TensorInfo(tuple(entry.size), entry.properties.dtype)
            for key, entry in metadata.state_dict_metadata.items()
            if key.startswith(MODEL_SECTION) and isinstance(entry, TensorStorageMetadata)
        }
        if not self._infos:
            raise UserError(f"{self.dcp_dir}: the checkpoint holds no model tensors (no 'model.*' entries)")

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        state = {
            MODEL_SECTION + n: torch.empty(self._infos[n].shape, dtype=self._infos[n].dtype) for n in names
        }
        with single_process_ok():
            dcp.load(state, storage_reader=FileSystemReader(str(self.dcp_dir)), no_dist=True)
        return {name[len(MODEL_SECTION) :]: tensor for name, tensor in state.items()}


class HfFolderSource:
    """The weights of a Hugging Face folder (`model.safetensors` or shards + index), under their saved names.

    Floating-point tensors come out in float32, the dtype the trainer's policy holds its weights
    in, so a base merged with its adapter here equals the training policy's merged weights.
    """

    label = "Hugging Face model folder"

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            files = [self.folder / name for name in sorted(set(weight_map.values()))]
        else:
            files = [self.folder / "model.safetensors"]
        if not all(file.is_file() for file in files):
            raise UserError(
                f"{self.folder}: no model.safetensors (or a shard its index names is missing); "
                "the base model folder must hold its safetensors weights"
            )
        self._file: dict[str, Path] = {}
        self._infos: dict[str, TensorInfo] = {}
        for file in files:
            with safe_open(str(file), "pt") as handle:
                for name in handle.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    piece = handle.get_slice(name)
                    dtype = _SAFETENSORS_DTYPES.get(piece.get_dtype())
                    if dtype is None:
                        raise UserError(
                            f"{file}: {name} has dtype {piece.get_dtype()}, which merge cannot read"
                        )
                    self._file[name] = file
                    self._infos[name] = TensorInfo(
                        tuple(piece.get_shape()), torch.float32 if dtype.is_floating_point else dtype
                    )

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        out = {}
        for file in sorted({self._file[n] for n in names}):
            with safe_open(str(file), "pt") as handle:
                for name in names:
                    if self._file[name] == file:
                        tensor = handle.get_tensor(name)
                        out[name] = tensor.float() if tensor.is_floating_point() else tensor
        return {name: out[name] for name in names}


class ModuleLayoutSource:
    """A hub-layout source (`HfFolderSource`) with its MoE experts in the module layout.

    Qwen3.5-MoE folders hold one tensor per expert and projection, Qwen3-VL-MoE folders the fused
    experts transposed; the trainer's state dict (and so a DCP checkpoint) holds them fused in the
    module layout, under the module name, and `run_merge` writes the hub layout back from that.
    Every other tensor passes through under its saved name.
    """

    def __init__(self, source: TensorSource, family: Family) -> None:
        self.source = source
        self.family = family
        self.label = source.label
        infos = source.tensors()
        self._parts = module_parts(family, infos)
        self._infos = {
            name: TensorInfo(
                module_shape(family, name, [infos[p].shape for p in parts]), infos[parts[0]].dtype
            )
            for name, parts in self._parts.items()
        }

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        hub = self.source.load(sorted({part for name in names for part in self._parts[name]}))
        return {name: module_tensor(self.family, name, hub, self._parts[name]) for name in names}


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class ReleasedSource:
    """`model_world_size_W_rank_R.pt` files (one per rank) of the released EasyR1 layout."""

    label = "released SophiaVL/EasyR1 checkpoint"

    def __init__(self, actor_dir: Path) -> None:
        self.actor_dir = Path(actor_dir)
        found = {}
        for file in self.actor_dir.iterdir():
            match = RELEASED_FILE_RE.match(file.name)
            if match:
                found[(int(match.group(1)), int(match.group(2)))] = file
        sizes = {world for world, _ in found}
        if len(sizes) != 1:
            raise UserError(
                f"{self.actor_dir}: expected model_world_size_W_rank_R.pt files of one world size, found "
                f"{sorted(p.name for p in found.values()) or 'none'}"
            )
        world = sizes.pop()
        missing = [rank for rank in range(world) if (world, rank) not in found]
        if missing:
            raise UserError(
                f"{self.actor_dir}: model_world_size_{world}_rank_{missing[0]}.pt is missing; copy every rank's file"
            )
        with _quiet_device_mesh():
            self._ranks = [
                torch.load(found[(world, r)], map_location="cpu", mmap=True, weights_only=True)
                for r in range(world)
            ]
        self._infos = {name: _info(value) for name, value in self._ranks[0].items() if torch.is_tensor(value)}

    def tensors(self) -> dict[str, TensorInfo]:
        return dict(self._infos)

    def load(self, names: list[str]) -> dict[str, torch.Tensor]:
        return {name: self._full(name) for name in names}

    def _full(self, name: str) -> torch.Tensor:
        value = self._ranks[0][name]
        if not isinstance(value, DTensor):
            return value.detach().clone()
        shard_dims = [(i, p) for i, p in enumerate(value.placements) if not isinstance(p, Replicate)]
        if not shard_dims:
            return value._local_tensor.detach().clone()
        if len(shard_dims) > 1 or type(shard_dims[0][1]) is not Shard:
            raise UserError(
                f"{self.actor_dir}: {name} has placements {value.placements}; only one Shard(d) is supported"
            )
        mesh_dim, placement = shard_dims[0]
        mesh = value.device_mesh.mesh
        other = [0] * mesh.dim()
        ranks = [
            int(mesh[(*other[:mesh_dim], i, *other[mesh_dim + 1 :])]) for i in range(mesh.shape[mesh_dim])
        ]
        pieces = [self._ranks[r][name]._local_tensor for r in ranks]
        full = torch.cat(pieces, dim=placement.dim)
        if tuple(full.shape) != tuple(value.shape):
            raise UserError(
                f"{self.actor_dir}: {name} reassembles to {tuple(full.shape)}, expected {tuple(value.shape)}; "
                "the rank files come from different runs"
            )
        return full


def _info(value: torch.Tensor) -> TensorInfo:
    return TensorInfo(tuple(value.shape), value.dtype)


@contextmanager
def _quiet_device_mesh() -> Iterator[None]:
    """Unpickling a DeviceMesh without process groups logs a torch.compile warning per tensor; irrelevant here."""
    logger = logging.getLogger("torch.distributed.device_mesh")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def released_actor_dir(path: Path) -> Path | None:
    """The folder holding `model_world_size_*` files: `path` itself or `path/actor`; None if neither."""
    for candidate in (Path(path), Path(path) / "actor"):
        if candidate.is_dir() and any(RELEASED_FILE_RE.match(p.name) for p in candidate.iterdir()):
            return candidate
    return None
