"""Parameter and optimizer-state offload between phases (`worker.actor.fsdp.offload_*`, `worker.ref.offload`).

EasyR1's and verl's scheme for FSDP on one GPU shared with vLLM: a model's shards live in host
memory except during the phases that compute with it, and AdamW's state except during the
update. Per step on a rank:

    generate      policy, ref, optimizer state in host memory; vLLM awake
    old log-probs policy on the GPU, then back
    ref log-probs reference on the GPU, then back
    update        policy and optimizer state on the GPU, then back
    sync          policy on the GPU (its full tensors stream into vLLM), then back

FSDP2 modules move with `module.to(device)` (their sharded parameters are re-registered), and
the optimizer keeps the same parameter objects, so nothing is rebuilt. On CPU there is nowhere
to offload to: the keys are reported at start (engine.honoured) and `Offload` does nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

HOST = torch.device("cpu")


def move_model(model: nn.Module, device: torch.device) -> None:
    """Move an FSDP2 model's shards (and buffers) to `device`."""
    model.to(device)


def move_optimizer_state(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move every tensor of the optimizer's state (AdamW's moments and step) to `device`, in place."""
    for state in optimizer.state.values():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != device:
                state[key] = value.to(device, non_blocking=False)


@dataclass
class Offload:
    """Which of the rank's models and optimizer state rest in host memory between phases."""

    device: torch.device
    params: bool = False
    optimizer: bool = False
    ref: bool = False

    @property
    def active(self) -> bool:
        return self.device.type == "cuda" and (self.params or self.optimizer or self.ref)

    def rest(self, policy: nn.Module, ref: nn.Module | None, optimizer: torch.optim.Optimizer) -> None:
        """Put what is offloaded into host memory (after setup, after a phase)."""
        if self.device.type != "cuda":
            return
        if self.params:
            move_model(policy, HOST)
        if self.ref and ref is not None:
            move_model(ref, HOST)
        if self.optimizer:
            move_optimizer_state(optimizer, HOST)
        torch.cuda.empty_cache()

    @contextmanager
    def on_device(
        self, model: nn.Module | None, optimizer: torch.optim.Optimizer | None = None, *, is_ref: bool = False
    ) -> Iterator[None]:
        """`model` (and `optimizer`'s state) on the GPU for the block, back in host memory after it."""
        move_params = (
            self.device.type == "cuda" and model is not None and (self.ref if is_ref else self.params)
        )
        move_state = self.device.type == "cuda" and optimizer is not None and self.optimizer
        if move_params:
            move_model(model, self.device)  # type: ignore[arg-type]
        if move_state:
            move_optimizer_state(optimizer, self.device)  # type: ignore[arg-type]
        try:
            yield
        finally:
            if move_params:
                move_model(model, HOST)  # type: ignore[arg-type]
            if move_state:
                move_optimizer_state(optimizer, HOST)  # type: ignore[arg-type]
            if move_params or move_state:
                torch.cuda.empty_cache()
