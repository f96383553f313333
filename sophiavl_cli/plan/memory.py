"""Per-GPU memory of each phase of a training step, from the recipe and the model's shape numbers.

Pure arithmetic (no torch): `plan_run(recipe, arch, gpu)` walks the phases a step runs on every
training GPU and adds what each holds, term by term (docs/plan.md gives every formula):

  start        the shards that are not offloaded, then vLLM reserving its share (vLLM refuses to
               start when that share is not free)
  generate     the rollout engine awake, beside whatever training state is not offloaded
  old          a no-grad forward of the policy (skipped when the update is on-policy)
  ref          the same with the frozen reference (when the KL term needs it)
  update       parameters, gradients and AdamW state (FSDP2 shards), saved activations of one
               micro-batch, the loss's logits, checkpointing's recomputed layer
  sync         the policy's full tensors gathered in buckets into the awake engine's weights

Sharded states are divided by the world size W (FSDP2 always shards fully here); FSDP2 gathers the
root unit (embedding, head, patch embedding, merger) for a whole forward and two blocks at a time
(the current and the prefetched), in the compute dtype. Offload keys move shards to host memory
outside the phases that compute with them (`engine/parallel/offload.py`); vLLM's sleep mode releases its
weights and KV cache outside generation and sync (`engine/rollout/vllm.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.plan.activations import (
    MicroBatch,
    forward_transient_bytes,
    logits_buffers,
    recompute_bytes,
    saved_activation_bytes,
)
from sophiavl_cli.plan.architecture import Architecture, TextArch
from sophiavl_cli.plan.gpus import GIB, Gpu

VLLM_GRAPHS_BYTES = GIB  # CUDA graphs captured by vLLM (enforce_eager=false), a typical size
VLLM_MAX_SEQS = 256  # vLLM's default max_num_seqs: the sampler's fp32 logits rows in its profile run
SERVER_BATCHED_TOKENS = 8192  # vLLM's server default max_num_batched_tokens (the RM is served so)
ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq
KAHAN_BUFFERS = 1  # pure bf16: the compensation buffer of each trained weight


@dataclass(frozen=True)
class Phase:
    """One phase on one GPU: named terms in bytes."""

    name: str
    terms: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.terms.values())


@dataclass(frozen=True)
class KvCache:
    """The rollout engine's KV cache: what fits in its share, what one sequence and one step need."""

    tokens: int  # tokens the cache holds
    max_model_len: int  # one sequence (vLLM refuses to start below this)
    step_tokens: int  # every sequence of one engine's share of a step at full length
    sequences: int  # full-length sequences it holds (each with its linear-attention state, if any)

    @property
    def starts(self) -> bool:
        return self.sequences >= 1


def kv_capacity(free: int, per_token: int, state: int, max_len: int, step_tokens: int) -> KvCache:
    """What `free` bytes hold at `per_token` KV bytes a token and `state` bytes a sequence (the
    recurrent and convolution state of linear-attention layers, fixed whatever the length)."""
    free = max(0, free)
    sequences = free // (max_len * per_token + state)
    tokens = max(0, free - sequences * state) // per_token
    return KvCache(tokens, max_len, step_tokens, sequences)


@dataclass(frozen=True)
class ServedModel:
    """`reward.thinking.serve`: the reward model on its own GPUs."""

    model: str
    params: int
    gpus: int
    per_gpu: dict[str, int]
    kv: KvCache | None
    fits: bool


@dataclass(frozen=True)
class Plan:
    recipe: Recipe
    arch: Architecture
    gpu: Gpu
    attention: str
    phases: list[Phase]
    kv: KvCache | None
    host_per_node: dict[str, int]
    served: ServedModel | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(p.total for p in self.phases)

    @property
    def peak_phase(self) -> str:
        return max(self.phases, key=lambda p: p.total).name

    @property
    def training_fits(self) -> bool:
        return self.peak <= self.gpu.usable_bytes and (self.kv is None or self.kv.starts)

    @property
    def fits(self) -> bool:
        return self.training_fits and (self.served is None or self.served.fits)


# --------------------------------------------------------------------------- states


@dataclass(frozen=True)
class States:
    """Bytes of the sharded states on one rank, and the bytes a phase gathers."""

    policy: int
    grads: int
    optimizer: int
    reference: int
    gathered: (
        int  # unsharded root + two blocks in the compute dtype (a forward); every block without full_shard
    )
    gathered_label: str
    unsharded_grads: int  # the root's unsharded gradients and one block's reduce-scatter input
    rollout_weights: int  # the engine's weights on this GPU
    trainable: int


def compute_bytes(recipe: Recipe) -> int:
    """The dtype forwards run in on GPU: bf16 unless `worker.actor.dtype=fp32`."""
    return 4 if recipe.worker.actor.dtype == "fp32" else 2


def master_bytes(recipe: Recipe) -> int:
    return 2 if recipe.worker.actor.master_dtype == "bf16" else 4


def lora_params(text: TextArch, rank: int, targets: list[str]) -> int:
    """peft's A (r x in) and B (out x r) on every targeted linear layer of the decoder (fused experts
    are not linear layers: on MoE models only attention and shared experts are adapted)."""
    wanted = set(targets)
    return sum(
        rank * (a + b)
        for i in range(text.num_layers)
        for name, (a, b) in text.linear_modules(i).items()
        if name in wanted
    )


def trainable_params(recipe: Recipe, arch: Architecture) -> int:
    """What has gradients and AdamW state: LoRA's adapters, or every weight (less a frozen vision tower)."""
    actor = recipe.worker.actor
    if actor.lora.rank > 0:
        return lora_params(arch.text, actor.lora.rank, actor.lora.target_modules)
    return arch.params - (arch.vision.params if actor.freeze_vision_tower else 0)


def rank_states(recipe: Recipe, arch: Architecture) -> States:
    w, cb, mb = recipe.world_size, compute_bytes(recipe), master_bytes(recipe)
    trainable = trainable_params(recipe, arch)
    stored = arch.params + (trainable if recipe.worker.actor.lora.rank > 0 else 0)
    optimizer_buffers = ADAMW_MOMENTS + (KAHAN_BUFFERS if mb == 2 else 0)
    reduce_bytes = 2 if mb == 2 else 4  # reduce_dtype fp32 under mixed precision
    full_ft = recipe.worker.actor.lora.rank == 0
    rollout = recipe.worker.rollout
    return States(
        policy=math.ceil(stored * mb / w),
        grads=math.ceil(trainable * mb / w),
        optimizer=math.ceil(optimizer_buffers * trainable * mb / w),
        reference=math.ceil(arch.params * cb / w),
        gathered=(
            (arch.root_params + 2 * arch.largest_block_params)
            if recipe.worker.actor.fsdp.full_shard
            else arch.params
        )
        * cb,
        gathered_label="gathered (root + 2 blocks)"
        if recipe.worker.actor.fsdp.full_shard
        else "gathered (every block: full_shard=false)",
        unsharded_grads=(arch.root_params * cb + arch.largest_block_params * reduce_bytes) if full_ft else 0,
        rollout_weights=arch.params
        * cb
        // (rollout.tensor_parallel_size if rollout.backend == "vllm" else 1),
        trainable=trainable,
    )


# --------------------------------------------------------------------------- micro-batches


def micro_batch(recipe: Recipe, arch: Architecture, rows: int, flash: bool) -> MicroBatch:
    """One micro-batch at full length. Packed when flash-attention runs with `padding_free`, except
    on hybrid models: their linear-attention state would cross packed sequences, so they pad."""
    data, actor = recipe.data, recipe.worker.actor
    seq_len = data.max_prompt_length + data.max_response_length
    images = max(1, recipe.worker.rollout.limit_images)
    packed = flash and actor.padding_free and arch.text.linear is None
    shape = {"images": rows * images, "pixels": data.max_pixels, "packed": packed, "flash": flash}
    budget = actor.max_tokens_per_micro_batch
    if budget is not None:  # the token budget replaces the row count (padding included)
        rows = max(1, budget // seq_len)
        shape["images"] = rows * images
        return MicroBatch(rows, seq_len, data.max_response_length, tokens=max(budget, seq_len), **shape)
    return MicroBatch(rows, seq_len, data.max_response_length, **shape)


# --------------------------------------------------------------------------- rollout engine


def vllm_activation_bytes(arch: Architecture, batched_tokens: int, tp: int, images: int, pixels: int) -> int:
    """vLLM's profile-run peak: one forward over `batched_tokens`, the sampler's logits, the encoder."""
    t, cb = arch.text, 2
    mixer = t.q_dim * (2 if t.gated_attention else 1) + 2 * t.kv_dim
    if t.linear is not None:  # a Gated DeltaNet layer's in_proj outputs: q, k, v, z, b, a
        mixer = max(mixer, 2 * t.linear.key_dim + 2 * t.linear.value_dim + 2 * t.linear.value_heads)
    per_token = cb * (4 * t.hidden_size + (mixer + 2 * t.mlp_width) // tp)
    sampler = VLLM_MAX_SEQS * t.vocab_size * 4
    v = arch.vision
    encoder = images * v.patches(pixels) * cb * (6 * v.hidden_size + 2 * v.intermediate_size) if images else 0
    return batched_tokens * per_token + sampler + encoder


def kv_cache(recipe: Recipe, arch: Architecture, gpu: Gpu, weights: int) -> KvCache:
    rollout, data = recipe.worker.rollout, recipe.data
    tp = rollout.tensor_parallel_size
    act = vllm_activation_bytes(
        arch, rollout.max_num_batched_tokens, tp, rollout.limit_images, data.max_pixels
    )
    graphs = 0 if rollout.enforce_eager else VLLM_GRAPHS_BYTES
    if rollout.kv_cache_memory_bytes is not None:
        free = rollout.kv_cache_memory_bytes
    else:
        free = int(rollout.gpu_memory_utilization * gpu.total_bytes) - weights - act - graphs
    max_len = data.max_prompt_length + data.max_response_length
    prompts = math.ceil(data.rollout_batch_size / recipe.world_size) * tp  # one engine serves its TP group
    text = arch.text
    return kv_capacity(
        free,
        text.kv_bytes_per_token // tp,
        text.state_bytes_per_sequence // tp,
        max_len,
        prompts * rollout.n * max_len,
    )


def vllm_budget(recipe: Recipe, arch: Architecture, gpu: Gpu, weights: int) -> int:
    """What the engine holds awake: its share of the card, or its weights + the KV bytes asked for."""
    rollout = recipe.worker.rollout
    if rollout.kv_cache_memory_bytes is None:
        return int(rollout.gpu_memory_utilization * gpu.total_bytes)
    act = vllm_activation_bytes(
        arch,
        rollout.max_num_batched_tokens,
        rollout.tensor_parallel_size,
        rollout.limit_images,
        recipe.data.max_pixels,
    )
    return weights + rollout.kv_cache_memory_bytes + act


def hf_generation_bytes(recipe: Recipe, arch: Architecture) -> int:
    """The hf backend's `generate` over a rank's prompts x n: KV cache at full length and one step's logits."""
    data, rollout = recipe.data, recipe.worker.rollout
    rows = math.ceil(data.rollout_batch_size / recipe.world_size) * rollout.n
    max_len = data.max_prompt_length + data.max_response_length
    cb = compute_bytes(recipe)
    text = arch.text
    kv = rows * (max_len * text.kv_bytes_per_token * cb // 2 + text.state_bytes_per_sequence)
    prefill = rows * data.max_prompt_length * text.mlp_width * cb * 3
    return kv + max(prefill, rows * text.vocab_size * 4 * 3)


# --------------------------------------------------------------------------- phases


def plan_run(recipe: Recipe, arch: Architecture, gpu: Gpu, *, attention: str = "flash") -> Plan:
    """Every phase of one step on one training GPU (`attention`: flash, or sdpa without flash-attention)."""
    actor, rollout = recipe.worker.actor, recipe.worker.rollout
    fsdp = actor.fsdp
    s = rank_states(recipe, arch)
    cb = compute_bytes(recipe)
    flash = attention == "flash"
    vllm = rollout.backend == "vllm"
    sleeps = vllm and rollout.enable_sleep_mode
    needs_ref = recipe.uses_reference
    budget = vllm_budget(recipe, arch, gpu, s.rollout_weights) if vllm else 0

    def resting(*, policy: bool, optimizer: bool, ref: bool, engine: str) -> dict[str, int]:
        """What stays on the GPU through a phase that does not compute with it."""
        terms: dict[str, int] = {}
        if policy and not fsdp.offload_params:
            terms["policy shards"] = s.policy
        if optimizer and not fsdp.offload_optimizer:
            terms["AdamW state"] = s.optimizer
        if ref and needs_ref and not recipe.worker.ref.offload:
            terms["reference shards"] = s.reference
        if not vllm:
            terms["hf rollout copy"] = s.rollout_weights
        elif engine == "awake" or not sleeps:
            terms["vLLM (weights + KV cache)"] = budget
        elif engine == "weights":
            terms["vLLM weights (awake for sync)"] = s.rollout_weights
        return terms

    phases: list[Phase] = []
    if vllm:  # the worker builds the engine after offloading (engine/workers/train_worker.py setup)
        start = resting(policy=True, optimizer=False, ref=True, engine="awake")
        phases.append(Phase("start", start))
    generate = resting(policy=True, optimizer=True, ref=True, engine="awake")
    if not vllm:
        generate["hf generate (KV cache, logits)"] = hf_generation_bytes(recipe, arch)
    phases.append(Phase("generate", generate))

    experience = micro_batch(recipe, arch, actor.micro_batch_size_per_device_for_experience, flash)
    forward = forward_transient_bytes(arch, experience, cb)
    if not (rollout.use_rollout_logprobs or recipe.on_policy_update):
        old = {"policy shards": s.policy, **resting(policy=False, optimizer=True, ref=True, engine="asleep")}
        phases.append(Phase("old", old | {s.gathered_label: s.gathered, "forward": forward}))
    if needs_ref:
        ref = {
            "reference shards": s.reference,
            **resting(policy=True, optimizer=True, ref=False, engine="asleep"),
        }
        phases.append(Phase("ref", ref | {s.gathered_label: s.gathered, "forward": forward}))

    update_mb = micro_batch(recipe, arch, actor.micro_batch_size_per_device_for_update, flash)
    gc = actor.gradient_checkpointing
    saved = saved_activation_bytes(arch, update_mb, cb, gc)
    peak_extra = max(
        logits_buffers(arch, update_mb, cb, backward=True), recompute_bytes(arch, update_mb, cb) if gc else 0
    )
    update = {
        "policy shards": s.policy,
        "gradients": s.grads,
        "AdamW state": s.optimizer,
        **resting(policy=False, optimizer=False, ref=True, engine="asleep"),
        s.gathered_label: s.gathered,
        "unsharded gradients": s.unsharded_grads,
        "activations (saved)": saved,
        "logits / recompute": peak_extra,
    }
    phases.append(Phase("update", update))

    bucket = rollout.weight_sync_bucket_mb << 20
    gather = 2 * bucket + bucket // recipe.world_size + arch.largest_tensor_params * (cb + 4)
    sync = {"policy shards": s.policy, **resting(policy=False, optimizer=True, ref=True, engine="weights")}
    phases.append(Phase("sync", sync | {"gathered buckets": gather}))
    phases = [Phase(p.name, {k: v for k, v in p.terms.items() if v}) for p in phases]

    kv = kv_cache(recipe, arch, gpu, s.rollout_weights) if vllm else None
    return Plan(recipe, arch, gpu, attention, phases, kv, host_memory(recipe, arch, s))


def host_memory(recipe: Recipe, arch: Architecture, s: States) -> dict[str, int]:
    """Host RAM per node for what offload and sleep mode move there (and rank 0's full copy at start)."""
    n = recipe.trainer.n_workers_per_node
    actor, rollout = recipe.worker.actor, recipe.worker.rollout
    out: dict[str, int] = {}
    if actor.fsdp.offload_params:
        out["policy shards"] = n * s.policy
    if actor.fsdp.offload_optimizer:
        out["AdamW state"] = n * s.optimizer
    if recipe.worker.ref.offload and recipe.uses_reference:
        out["reference shards"] = n * s.reference
    if rollout.backend == "vllm" and rollout.enable_sleep_mode:
        out["sleeping vLLM weights"] = n * s.rollout_weights
    out["rank 0 loading the full model (start)"] = arch.params * master_bytes(recipe)
    return out


def plan_served(recipe: Recipe, arch: Architecture, gpu: Gpu) -> ServedModel | None:
    """`reward.thinking.serve` on its own GPUs: vLLM's share must hold the weights, its profile run and a
    KV cache for one sequence of `reward.thinking.serve.max_model_len` (unset: the model's full context)."""
    serve = recipe.reward.thinking.serve
    if serve is None:
        return None
    cb = 4 if serve.dtype == "fp32" else 2
    if serve.backend == "hf":
        weights = arch.params * cb
        concurrency = recipe.reward.thinking.concurrency
        activations = concurrency * (
            recipe.data.max_prompt_length * arch.text.kv_bytes_per_token * cb // 2
            + arch.text.state_bytes_per_sequence
        )
        terms = {"weights": weights, "KV cache and activations": activations}
        return ServedModel(
            serve.model, arch.params, max(serve.gpus, 1), terms, None, sum(terms.values()) <= gpu.usable_bytes
        )
    tp = serve.tensor_parallel_size
    weights = arch.params * cb // tp
    act = vllm_activation_bytes(arch, SERVER_BATCHED_TOKENS, tp, 1, recipe.data.max_pixels)
    share = int(serve.gpu_memory_utilization * gpu.total_bytes)
    max_len = serve.max_model_len or arch.text.max_position_embeddings
    kv = kv_capacity(
        share - weights - act - VLLM_GRAPHS_BYTES,
        arch.text.kv_bytes_per_token // tp,
        arch.text.state_bytes_per_sequence // tp,
        max_len,
        max_len,
    )
    terms = {"vLLM (weights + KV cache)": share}
    fits = share <= gpu.usable_bytes + gpu.margin_bytes - int(GIB) and kv.starts
    return ServedModel(serve.model, arch.params, serve.gpus, terms | {"of which weights": weights}, kv, fits)
