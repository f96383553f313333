"""Out-of-memory in a worker phase, turned into one line that names the recipe knobs to turn.

A CUDA OOM prints a page about allocator fragmentation; a CPU one an `alloc_cpu.cpp` enforce
message. Neither says which part of the recipe asked for the memory. `explain_oom(phase, recipe,
device)` wraps a worker phase (generate, old / reference log-probs, update) and re-raises any
out-of-memory error as `WorkerOutOfMemory` whose message lists that phase's knobs with their
current values and the `sophiavl plan` command that sizes every phase of the run's recipe. The
driver's worker group shows it as `worker rank R failed during <phase>: ...`.

A worker killed by the kernel's OOM killer never gets here: `cluster.WorkerGroup` then reports
the actor's death with a fixed hint (the micro-batch sizes and `data.max_response_length`), not
this phase-specific list.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from sophiavl_cli.config.recipe import Recipe

PHASES = ("generate", "old log-probs", "ref log-probs", "update")
# What the CPU allocator and CUDA calls outside the caching allocator (cuBLAS, NCCL) say.
_OOM_TEXT = ("can't allocate memory", "defaultcpuallocator", "out of memory")


class WorkerOutOfMemory(RuntimeError):
    """A phase ran out of memory; the message names the recipe keys that size it."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch's OOM (CUDA, MPS, XPU), Python's MemoryError (numpy too), or torch's CPU allocator failure."""
    if isinstance(exc, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(text in str(exc).lower() for text in _OOM_TEXT)


def oom_knobs(phase: str, recipe: Recipe) -> tuple[list[str], list[str]]:
    """(keys to lower, switches to turn on) that set this phase's memory, most effective first.

    Keys to lower carry their current value, e.g. `data.max_response_length (now 1024)`.
    """
    actor, rollout, data = recipe.worker.actor, recipe.worker.rollout, recipe.data
    lower: list[str] = []
    turn_on: list[str] = []
    tokens = getattr(actor, "max_tokens_per_micro_batch", None)  # replaces the row counts when set
    budget = f"worker.actor.max_tokens_per_micro_batch (now {tokens})" if tokens else None
    if phase == "generate":
        if rollout.backend == "vllm":
            lower.append(f"worker.rollout.gpu_memory_utilization (now {rollout.gpu_memory_utilization})")
        else:  # hf generates a prompt's n samples as one batch
            lower.append(f"worker.rollout.n (now {rollout.n})")
    elif phase in ("old log-probs", "ref log-probs"):
        size = actor.micro_batch_size_per_device_for_experience
        lower.append(budget or f"worker.actor.micro_batch_size_per_device_for_experience (now {size})")
    elif phase == "update":
        size = actor.micro_batch_size_per_device_for_update
        lower.append(budget or f"worker.actor.micro_batch_size_per_device_for_update (now {size})")
        if not actor.gradient_checkpointing:
            turn_on.append("worker.actor.gradient_checkpointing")
    else:
        raise ValueError(f"unknown phase {phase!r}; one of {', '.join(PHASES)}")
    lower.append(f"data.max_response_length (now {data.max_response_length})")
    if phase != "generate" and rollout.backend == "vllm":  # vLLM's reservation stays during training
        lower.append(f"worker.rollout.gpu_memory_utilization (now {rollout.gpu_memory_utilization})")
        if not rollout.enable_sleep_mode:
            turn_on.append("worker.rollout.enable_sleep_mode")
    # what rests on the GPU through this phase without being used in it (engine.offload)
    fsdp, kl = actor.fsdp, recipe.algorithm.use_kl_loss and recipe.algorithm.kl_coef > 0
    if phase in ("generate", "ref log-probs") and not fsdp.offload_params:
        turn_on.append("worker.actor.fsdp.offload_params")
    if phase != "update" and not fsdp.offload_optimizer:
        turn_on.append("worker.actor.fsdp.offload_optimizer")
    if phase != "ref log-probs" and kl and not recipe.worker.ref.offload:
        turn_on.append("worker.ref.offload")
    return lower, turn_on


def oom_message(phase: str, recipe: Recipe, device: str) -> str:
    """One line: where memory ran out, the knobs, and the planner command that sizes every phase
    of this very recipe (the run folder's recipe.yaml holds it with its overrides)."""
    from sophiavl_cli.engine.lifecycle.run_folder import run_dir_of

    lower, turn_on = oom_knobs(phase, recipe)
    text = f"out of {device} memory in {phase}: lower " + _either(lower)
    if turn_on:
        text += ", or set " + _either([f"{key}=true" for key in turn_on])
    plan = f"sophiavl plan {run_dir_of(recipe.trainer) / 'recipe.yaml'} KEY=VALUE ... --gpu NAME"
    return text + f"; `{plan}` shows what each phase needs with a change; then resume with --resume auto"


def _either(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


@contextmanager
def explain_oom(phase: str, recipe: Recipe, device: str) -> Iterator[None]:
    """Re-raise an out-of-memory error inside the block as `WorkerOutOfMemory` naming the knobs."""
    try:
        yield
    except Exception as exc:  # MemoryError is an Exception too
        if not is_out_of_memory(exc):
            raise
        raise WorkerOutOfMemory(oom_message(phase, recipe, device)) from exc
