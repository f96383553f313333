"""When a recipe does not fit: the cheapest recipe changes that make it fit, each with its new peak.

Levers, in order of what they cost the run (the first ones only speed, the later ones the training
itself or the cluster): enable vLLM's sleep mode, smaller micro-batches, a smaller vLLM share,
gradient checkpointing, offload keys, LoRA, pure bf16, more GPUs, rollout tensor parallelism. Each
lever is tried alone with its mildest setting that fits; when none fits alone, the levers are
stacked in that order until the plan fits. A change is a list of `key=value` overrides, ready to
paste after the recipe on the command line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from sophiavl_cli.config.loading import apply_overrides, validate_recipe
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.errors import UserError
from sophiavl_cli.plan.memory import Plan

LORA_RANK = 64
MAX_NODES = 16


@dataclass(frozen=True)
class Suggestion:
    lever: str
    overrides: list[str]
    peak: int
    fits: bool


Planner = Callable[[Recipe], Plan]


def _halvings(value: int) -> Iterator[int]:
    while value > 1:
        value //= 2
        yield value


def _micro_batches(r: Recipe) -> Iterator[list[str]]:
    actor = r.worker.actor
    if actor.max_tokens_per_micro_batch is not None:
        for tokens in _halvings(actor.max_tokens_per_micro_batch):
            if tokens >= r.data.max_prompt_length + r.data.max_response_length:
                yield [f"worker.actor.max_tokens_per_micro_batch={tokens}"]
        return
    update, experience = (
        actor.micro_batch_size_per_device_for_update,
        actor.micro_batch_size_per_device_for_experience,
    )
    while update > 1 or experience > 1:
        update, experience = max(1, update // 2), max(1, experience // 2)
        yield [
            f"worker.actor.micro_batch_size_per_device_for_update={update}",
            f"worker.actor.micro_batch_size_per_device_for_experience={experience}",
        ]


def _sleep(r: Recipe) -> Iterator[list[str]]:
    if r.worker.rollout.backend == "vllm" and not r.worker.rollout.enable_sleep_mode:
        yield ["worker.rollout.enable_sleep_mode=true"]


def _vllm_share(r: Recipe) -> Iterator[list[str]]:
    rollout = r.worker.rollout
    if rollout.backend != "vllm" or rollout.kv_cache_memory_bytes is not None:
        return
    share = round(rollout.gpu_memory_utilization - 0.05, 2)
    while share >= 0.15:
        yield [f"worker.rollout.gpu_memory_utilization={share}"]
        share = round(share - 0.05, 2)


def _vllm_room(r: Recipe) -> Iterator[list[str]]:
    """A larger share when the engine's KV cache cannot hold one sequence (vLLM would not start)."""
    rollout = r.worker.rollout
    if rollout.backend != "vllm" or rollout.kv_cache_memory_bytes is not None:
        return
    share = round(rollout.gpu_memory_utilization + 0.05, 2)
    while share <= 0.9:
        yield [f"worker.rollout.gpu_memory_utilization={share}"]
        share = round(share + 0.05, 2)


def _checkpointing(r: Recipe) -> Iterator[list[str]]:
    if not r.worker.actor.gradient_checkpointing:
        yield ["worker.actor.gradient_checkpointing=true"]


def _offload(r: Recipe) -> Iterator[list[str]]:
    keys = [
        ("worker.actor.fsdp.offload_optimizer", r.worker.actor.fsdp.offload_optimizer),
        ("worker.actor.fsdp.offload_params", r.worker.actor.fsdp.offload_params),
        ("worker.ref.offload", r.worker.ref.offload or not r.uses_reference),
    ]
    missing = [key for key, on in keys if not on]
    for count in range(1, len(missing) + 1):
        yield [f"{key}=true" for key in missing[:count]]


def _lora(r: Recipe) -> Iterator[list[str]]:
    if r.worker.actor.lora.rank == 0:
        yield [f"worker.actor.lora.rank={LORA_RANK}"]


def _pure_bf16(r: Recipe) -> Iterator[list[str]]:
    if r.worker.actor.master_dtype != "bf16" and r.worker.actor.dtype != "fp32":
        yield ["worker.actor.master_dtype=bf16"]


def _more_gpus(r: Recipe) -> Iterator[list[str]]:
    per_node = r.trainer.n_workers_per_node
    for workers in range(per_node + 1, 9):
        yield [f"trainer.n_workers_per_node={workers}"]
    for nodes in range(r.trainer.nnodes + 1, MAX_NODES + 1):
        yield [f"trainer.nnodes={nodes}", f"trainer.n_workers_per_node={max(per_node, 8)}"]


def _tensor_parallel(r: Recipe) -> Iterator[list[str]]:
    rollout = r.worker.rollout
    if rollout.backend != "vllm":
        return
    size = rollout.tensor_parallel_size * 2
    while size <= r.trainer.n_workers_per_node:
        if r.trainer.n_workers_per_node % size == 0:
            yield [f"worker.rollout.tensor_parallel_size={size}"]
        size *= 2


LEVERS: list[tuple[str, Callable[[Recipe], Iterator[list[str]]]]] = [
    ("vLLM sleep mode", _sleep),
    ("smaller micro-batches", _micro_batches),
    ("smaller vLLM share", _vllm_share),
    ("larger vLLM share", _vllm_room),
    ("gradient checkpointing", _checkpointing),
    ("offload to host memory", _offload),
    ("LoRA", _lora),
    ("pure bf16", _pure_bf16),
    ("more GPUs", _more_gpus),
    ("rollout tensor parallelism", _tensor_parallel),
]


def with_overrides(recipe: Recipe, overrides: list[str]) -> Recipe | None:
    """The recipe with `overrides`, or None when they make it invalid (e.g. batches that no longer divide)."""
    data = apply_overrides(recipe.model_dump(mode="json", exclude_unset=False), overrides)
    try:
        return validate_recipe(data, "plan")
    except UserError:
        return None


def _first_fit(recipe: Recipe, lever: Callable[[Recipe], Iterator[list[str]]], planner: Planner):
    """(overrides, plan) of the mildest setting that fits, else of the strongest valid one, else None."""
    best = None
    for overrides in lever(recipe):
        changed = with_overrides(recipe, overrides)
        if changed is None:
            continue
        plan = planner(changed)
        best = (overrides, plan)
        if plan.training_fits:
            return best
    return best


def suggest(recipe: Recipe, planner: Planner, limit: int = 4) -> list[Suggestion]:
    """Single changes that make the plan fit, cheapest first; else the levers stacked until it fits."""
    fitting: list[Suggestion] = []
    for name, lever in LEVERS:
        found = _first_fit(recipe, lever, planner)
        if found is not None and found[1].training_fits:
            fitting.append(Suggestion(name, found[0], found[1].peak, True))
            if len(fitting) == limit:
                return fitting
    if fitting:
        return fitting
    return _stacked(recipe, planner)


def _stacked(recipe: Recipe, planner: Planner) -> list[Suggestion]:
    """The levers applied one after another (each at its mildest fitting setting, else its strongest;
    more GPUs only where some count fits), then every lever the fit does not need dropped again."""
    chosen: list[tuple[str, list[str]]] = []
    current = recipe
    for name, lever in LEVERS:
        found = _first_fit(current, lever, planner)
        if found is None or (name == "more GPUs" and not found[1].training_fits):
            continue
        overrides, plan = found
        if plan.peak >= planner(current).peak and not plan.training_fits:
            continue  # this lever does not help here
        changed = with_overrides(current, overrides)
        if changed is None:
            continue
        chosen.append((name, overrides))
        current = changed
        if plan.training_fits:
            break
    if not chosen:
        return []
    for item in reversed(list(chosen)):  # drop what the fit does not need, costliest first
        rest = [other for other in chosen if other is not item]
        candidate = with_overrides(recipe, [o for _, overrides in rest for o in overrides])
        if rest and candidate is not None and planner(candidate).training_fits:
            chosen = rest
    overrides = [o for _, group in chosen for o in group]
    final = with_overrides(recipe, overrides)
    plan = planner(final) if final is not None else planner(current)
    return [Suggestion(" + ".join(name for name, _ in chosen), overrides, plan.peak, plan.training_fits)]
