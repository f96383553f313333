"""The worker: one Ray actor per rank holding the FSDP2 policy, the frozen reference and a rollout engine.

Methods are short adapters called by the driver on every rank at once (the FSDP ones are
collective): take plain inputs (lists, numpy arrays), run torch, return plain outputs and
`(name -> float)` metrics. State kept between calls within a step: the rank's sequences and
their old / reference log-probs, so only advantages cross Ray for the update.

Lifecycle: `__init__` (no torch work) -> `rendezvous_address` on rank 0 -> `setup` on all ->
per step `generate`, `set_sequences`, `compute_old_logprobs`, `compute_ref_logprobs`, `update`,
`sync_weights` -> `save_checkpoint` / `load_checkpoint` -> `shutdown`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from sophiavl_cli.algo.losses import AggScale, kl_penalty, token_logprobs
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.config.worker import OptimConfig
from sophiavl_cli.engine.observe import quiet
from sophiavl_cli.engine.parallel import fsdp
from sophiavl_cli.engine.parallel.offload import Offload
from sophiavl_cli.engine.parallel.weight_sync import stream_full_tensors
from sophiavl_cli.engine.rollout import RolloutOutput, RolloutPrompt, SamplingParams, build_rollout_engine
from sophiavl_cli.engine.rollout.base import HeldPatches, WirePatches, derive_seed, patches_from_wire
from sophiavl_cli.engine.schedule import lr_multiplier
from sophiavl_cli.engine.workers import build, lora
from sophiavl_cli.engine.workers.batching import (
    MicroBatch,
    TrainSequence,
    budget_micro_batches,
    chunk,
    micro_batches,
    stack_rows,
    with_advantage,
)
from sophiavl_cli.engine.workers.forward import response_tokens
from sophiavl_cli.engine.workers.objective import ObjectiveConfig, actor_objective
from sophiavl_cli.engine.workers.oom import explain_oom
from sophiavl_cli.metrics.keys import ACTOR_GRAD_NORM, ACTOR_LR, ACTOR_SKIPPED
from sophiavl_cli.metrics.registry import namespaced, reduce_records


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a worker needs to build itself (sent once, plain and picklable)."""

    recipe: Recipe
    model_dir: str
    master_addr: str
    master_port: int
    device: str  # "cpu" | "cuda"
    optimizer_steps_total: int
    need_ref: bool
    eos_token_ids: list[int]
    pad_token_id: int
    collective_timeout_s: float


class TrainWorker:
    """One rank. Created by `cluster.WorkerGroup` as a Ray actor."""

    def __init__(self, rank: int, world_size: int, env: dict[str, str], num_threads: int) -> None:
        os.environ.update(env)
        quiet.install()
        torch.set_num_threads(max(1, num_threads))
        self.rank = rank
        self.world_size = world_size
        self._sequences: list[TrainSequence] = []
        self._experience_count: int | None = None  # micro-batches per log-prob pass (token budget)
        self._update_counts: list[int] | None = None  # micro-batches per optimizer step (token budget)
        self._held_patches: dict[int, np.ndarray] = {}  # WirePatches.key -> float32 patches, for one step
        self._old_logp: dict[int, np.ndarray] = {}
        self._ref_logp: dict[int, np.ndarray] = {}
        self.optimizer_step = 0

    # ---- setup -------------------------------------------------------------------------------

    def rendezvous_address(self) -> tuple[str, int]:
        """This node's IP and the port of the process-group store rank 0 now hosts (kept bound)."""
        self._store = fsdp.host_store(self.world_size)
        return fsdp.node_ip(), int(self._store.port)

    def describe(self) -> dict[str, object]:
        """Rank, host, pid, device and the vLLM all-reduce variables it runs with: written to the run
        dir's workers.json (debugging, kill tests, MFU)."""
        from sophiavl_cli.engine.rollout.vllm import TP_ALLREDUCE_ENV

        cuda = getattr(self, "device", torch.device("cpu")).type == "cuda"
        device_name = torch.cuda.get_device_name(self.device) if cuda else "cpu"
        allreduce = {name: os.environ[name] for name in TP_ALLREDUCE_ENV if name in os.environ}
        return {
            "rank": self.rank,
            "host": fsdp.node_ip(),
            "pid": os.getpid(),
            "device_name": device_name,
            "niceness": os.nice(
                0
            ),  # 15 under a `ray start` without RAY_worker_niceness=0 (docs/multinode.md)
            "vllm_allreduce_env": allreduce,
        }

    def _join(self, spec: Any) -> None:
        """What every kind of worker does first: quiet transformers, pick the device, join the
        process group (through the store rank 0 holds, if any), seed this rank."""
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        self.spec = spec
        self.recipe = spec.recipe
        self.device = (
            torch.device("cuda", torch.cuda.current_device())
            if spec.device == "cuda"
            else torch.device("cpu")
        )
        fsdp.init_process_group(
            self.rank,
            self.world_size,
            spec.master_addr,
            spec.master_port,
            spec.device,
            spec.collective_timeout_s,
            store=getattr(self, "_store", None),
        )
        torch.manual_seed(derive_seed(spec.recipe.trainer.seed, self.rank))

    def setup(self, spec: WorkerSpec) -> dict[str, float]:
        """Join the process group, load and shard the policy (and reference), build the rollout copy."""
        start = time.perf_counter()
        self._join(spec)
        actor = spec.recipe.worker.actor
        param_dtype = build.compute_dtype(spec.device, actor.dtype, actor.master_dtype)
        self.policy = build.load_trainable(
            spec.model_dir,
            self.device,
            param_dtype,
            gradient_checkpointing=actor.gradient_checkpointing,
            freeze_vision_tower=actor.freeze_vision_tower,
            lora_config=actor.lora,
            master_dtype=actor.master_dtype,
            full_shard=actor.fsdp.full_shard,
        )
        self.ref = None
        if spec.need_ref:
            self.ref = build.load_frozen(
                spec.model_dir, self.device, param_dtype or torch.float32, full_shard=actor.fsdp.full_shard
            )
        self.optimizer = build.build_optimizer(self.policy, actor.optim, actor.master_dtype)
        self.forward = build.response_forward(self.policy, self.device, actor.padding_free)
        self.objective = ObjectiveConfig.from_recipe(spec.recipe, use_kl=spec.need_ref)
        self.offload = Offload(
            self.device,
            params=actor.fsdp.offload_params,
            optimizer=actor.fsdp.offload_optimizer,
            ref=spec.recipe.worker.ref.offload,
        )
        self.offload.rest(self.policy, self.ref, self.optimizer)
        # after the rest: vLLM reserves its share of what is free, so offloaded shards must be gone by then
        self.rollout_dtype = param_dtype or torch.float32
        self.rollout = build_rollout_engine(
            spec.recipe,
            spec.model_dir,
            dtype=self.rollout_dtype,
            device=self.device,
            eos_token_ids=spec.eos_token_ids,
            pad_token_id=spec.pad_token_id,
        )
        dist.barrier()
        return {"setup_s": time.perf_counter() - start}

    # ---- rollout -----------------------------------------------------------------------------

    def generate(
        self, prompts: list[RolloutPrompt], n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        """Local generation on the rollout copy (no collectives)."""
        prompts = self.receive_prompts(prompts)
        with explain_oom("generate", self.recipe, self.spec.device):
            return self.rollout.generate(prompts, n, sampling, seed)

    def receive_prompts(self, prompts: list[RolloutPrompt]) -> list[RolloutPrompt]:
        """Prompts with float32 patches; each prompt's patches are kept until the step's sequences
        arrive (they name them with `HeldPatches` instead of sending them again)."""
        for prompt in prompts:
            if isinstance(prompt.pixel_values, WirePatches):
                self._held_patches[prompt.pixel_values.key] = patches_from_wire(prompt.pixel_values)
        return [replace(p, pixel_values=self._patches(p.pixel_values)) for p in prompts]

    def receive_sequences(self, sequences: list[TrainSequence]) -> list[TrainSequence]:
        """Sequences with float32 patches (sent, or held since `generate`); the held ones are let go."""
        received = [replace(s, pixel_values=self._patches(s.pixel_values)) for s in sequences]
        self._held_patches = {}
        return received

    def _patches(self, value: Any) -> np.ndarray | None:
        if isinstance(value, HeldPatches):
            return self._held_patches[value.key]
        if isinstance(value, WirePatches):
            return (
                self._held_patches.get(value.key)
                if value.key in self._held_patches
                else patches_from_wire(value)
            )
        return value

    def sync_weights(self) -> float:
        """Stream the policy's full tensors into the rollout copy in buckets (collective); seconds."""
        start = time.perf_counter()
        with self.offload.on_device(self.policy):
            self.rollout.sync_weights(self.policy_tensors())
        return time.perf_counter() - start

    def policy_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(transformers name, full tensor) of the policy, LoRA merged in (collective: all ranks iterate).

        Gathered in buckets of `worker.rollout.weight_sync_bucket_mb` (one all-gather per bucket), cast
        to the rollout dtype before the gather (LoRA: what merges stays fp32 until merged)."""
        bucket_bytes = self.recipe.worker.rollout.weight_sync_bucket_mb << 20
        lora_cfg = self.recipe.worker.actor.lora
        keep = lora.is_merge_input if lora_cfg.rank > 0 else None
        tensors = stream_full_tensors(self.policy, bucket_bytes, self.rollout_dtype, keep)
        return lora.merged_tensors(tensors, lora_cfg.alpha / lora_cfg.rank) if lora_cfg.rank > 0 else tensors

    # ---- experience --------------------------------------------------------------------------

    def set_sequences(
        self,
        sequences: list[TrainSequence],
        experience_count: int | None = None,
        update_counts: list[int] | None = None,
    ) -> int:
        """This rank's sequences for the step, in update order (optimizer step by optimizer step).

        With a token budget the driver also says how many micro-batches every rank runs in the
        log-prob passes and in each optimizer step (the same on all ranks; see `step.micro_batch_plan`).
        """
        self._sequences = self.receive_sequences(sequences)
        self._experience_count, self._update_counts = experience_count, update_counts
        self._old_logp, self._ref_logp = {}, {}
        return len(self._sequences)

    @torch.no_grad()
    def compute_old_logprobs(self) -> dict[str, float]:
        """Log-probs of the sampled tokens under the current policy (temperature-scaled logits).

        With `worker.rollout.use_rollout_logprobs` the rollout engine's own log-probs are used:
        the rollout copy holds the same weights as the policy (synced after every step), so the
        forward pass would recompute the same numbers. No collective runs then, on any rank.
        Otherwise, when the step makes one optimizer step over the whole batch (see `_on_policy`),
        no pass runs either: the update scores the tokens with these very weights, so its own
        forward pass, detached, gives the old log-probs (as verl's and TRL's on-policy path does).
        """
        if self.recipe.worker.rollout.use_rollout_logprobs:
            missing = [s.index for s in self._sequences if s.old_logprobs is None]
            if missing:
                raise ValueError(
                    f"rank {self.rank}: the rollout returned no log-probs for rows {missing[:5]}"
                )
            self._old_logp = {s.index: np.asarray(s.old_logprobs, np.float32) for s in self._sequences}
            return {}
        if self._on_policy():
            self._old_logp = {}  # `_micro_batch_loss` takes them from the update's own forward pass
            return {}
        with explain_oom("old log-probs", self.recipe, self.spec.device), self.offload.on_device(self.policy):
            self._old_logp = self._logprobs(self.policy)
        return {}

    @torch.no_grad()
    def compute_ref_logprobs(self) -> dict[str, float]:
        """Log-probs under the frozen reference; a no-op when the KL term is off."""
        if self.ref is not None:
            with (
                explain_oom("ref log-probs", self.recipe, self.spec.device),
                self.offload.on_device(self.ref, is_ref=True),
            ):
                self._ref_logp = self._logprobs(self.ref)
        return {}

    def _logprobs(self, model: torch.nn.Module) -> dict[int, np.ndarray]:
        size = self.recipe.worker.actor.micro_batch_size_per_device_for_experience
        temperature = self._temperature()
        was_training = model.training
        model.eval()
        out: dict[int, np.ndarray] = {}
        for mb in self._micro_batches(self._sequences, size, self._experience_count):
            logits = self.forward.logits(model, mb)  # [B, R, V]
            logp = (
                token_logprobs(logits, response_tokens(mb, self.device), temperature).cpu().numpy()
            )  # [B, R]
            lengths = mb.response_mask.sum(axis=1).astype(int)
            for row, index in enumerate(mb.indices):
                out[index] = logp[row, : lengths[row]].astype(np.float32)
        model.train(was_training)
        fsdp.reshard_after_no_grad(model)
        return out

    # ---- update ------------------------------------------------------------------------------

    def update(self, advantages: list[float] | list[np.ndarray], num_updates: int) -> dict[str, float]:
        """PPO epochs x `num_updates` optimizer steps over this rank's sequences; metrics reduced by the registry.

        An advantage is one float per sequence or an array over its response tokens.
        """
        if len(advantages) != len(self._sequences):
            raise ValueError(
                f"rank {self.rank}: {len(advantages)} advantages for {len(self._sequences)} sequences"
            )
        if self._on_policy() and num_updates * self.recipe.worker.actor.ppo_epochs != 1:
            raise ValueError(  # compute_old_logprobs skipped the pass for one optimizer step
                f"rank {self.rank}: the recipe makes one optimizer step per batch, update asked for "
                f"{num_updates * self.recipe.worker.actor.ppo_epochs}"
            )
        sequences = [with_advantage(s, a) for s, a in zip(self._sequences, advantages, strict=True)]
        per_update = len(sequences) // num_updates
        history: list[dict[str, float]] = []
        self.policy.train()
        counts = self._update_counts or [None] * num_updates
        with (
            explain_oom("update", self.recipe, self.spec.device),
            self.offload.on_device(self.policy, self.optimizer),
        ):
            for _ in range(self.recipe.worker.actor.ppo_epochs):
                for rows, count in zip(chunk(range(len(sequences)), per_update), counts, strict=True):
                    history.append(self._optimizer_step([sequences[i] for i in rows], count))
            self.optimizer.zero_grad(set_to_none=True)  # no gradients held through generation
        return reduce_records(history)

    def _micro_batches(
        self, sequences: list[TrainSequence], size: int, count: int | None
    ) -> list[MicroBatch]:
        """`count` micro-batches under the token budget when one is set, else rows of `size`."""
        budget = self.recipe.worker.actor.max_tokens_per_micro_batch
        if budget is None or count is None:
            return micro_batches(sequences, size, self.spec.pad_token_id)
        return budget_micro_batches(sequences, budget, count, self.spec.pad_token_id)

    def _optimizer_step(self, sequences: list[TrainSequence], count: int | None = None) -> dict[str, float]:
        actor = self.recipe.worker.actor
        mbs = self._micro_batches(sequences, actor.micro_batch_size_per_device_for_update, count)
        self.optimizer.zero_grad(set_to_none=True)
        scale = self._mini_batch_scale(sequences)
        sums: dict[str, float] = {}
        nonfinite = False
        with fsdp.gathered_through(self.policy, len(mbs), keep=not actor.fsdp.full_shard) as before_backward:
            for i, mb in enumerate(mbs):
                loss, metrics = self._micro_batch_loss(mb, scale)
                nonfinite |= not bool(torch.isfinite(loss.detach()))
                # each share is over the mini-batch's totals on all ranks; FSDP averages gradients over
                # ranks, so scaling by the world size makes their sum the mini-batch loss's gradient
                before_backward(i)
                (loss * self.world_size).backward()
                for key, value in metrics.items():  # shares add up to this rank's part of the mini-batch
                    sums[key] = sums.get(key, 0.0) + value * self.world_size
        grad_norm, lr, skipped = self._apply_gradients(nonfinite, actor.optim, actor.max_grad_norm)
        return reduce_records([namespaced("actor", sums)]) | {
            ACTOR_GRAD_NORM: grad_norm,
            ACTOR_LR: lr,
            ACTOR_SKIPPED: float(skipped),
        }

    def _apply_gradients(
        self, nonfinite: bool, optim: OptimConfig, max_grad_norm: float
    ) -> tuple[float, float, bool]:
        """Clip, then step at the scheduled LR, or skip the step on every rank when any saw a non-finite
        loss or gradient (one bad batch must not poison the weights, nor ranks drift apart).

        Returns the gradient norm before clipping, the LR and whether the step was skipped; the
        optimizer-step counter moves either way so the schedule stays aligned with the data.
        """
        grad_norm = fsdp.clip_grad_norm(self.policy, max_grad_norm)
        flag = torch.tensor([1.0 if nonfinite or not math.isfinite(grad_norm) else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank skips together, or none does
        lr = optim.lr * lr_multiplier(
            self.optimizer_step,
            self.spec.optimizer_steps_total,
            kind=optim.lr_scheduler,
            warmup_ratio=optim.lr_warmup_ratio,
        )
        skipped = bool(flag.item())
        if skipped:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.optimizer.step()
        self.optimizer_step += 1
        return grad_norm, lr, skipped

    def _mini_batch_scale(self, sequences: list[TrainSequence]) -> AggScale:
        """Response tokens and sequences of this optimizer step on all ranks (one all-reduce)."""
        counts = torch.tensor(
            [float(sum(len(s.response_ids) for s in sequences)), float(len(sequences))],
            dtype=torch.float64,
            device=self.device,
        )
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        tokens, count = counts.tolist()
        return AggScale(
            tokens=tokens, sequences=count, max_length=float(self.recipe.data.max_response_length)
        )

    def token_kl(self) -> list[np.ndarray]:
        """Per-token KL(old policy || reference) of this rank's sequences, in their order (kl_in_reward)."""
        kind = self.recipe.algorithm.kl_penalty
        out = []
        for s in self._sequences:
            old = torch.from_numpy(self._old_logp[s.index])
            ref = torch.from_numpy(self._ref_logp[s.index]) if self._ref_logp else old
            out.append(kl_penalty(old, ref, kind).numpy().astype(np.float32))
        return out

    def _micro_batch_loss(
        self, mb: MicroBatch, scale: AggScale | None = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.forward.logits(self.policy, mb)  # [B, R, V]
        tokens = response_tokens(mb, self.device)  # [B, R]
        mask = torch.tensor(mb.response_mask, device=self.device)  # [B, R]
        # None: on-policy, the objective uses this forward pass's log-probs, detached
        old = (
            torch.tensor(stack_rows(self._old_logp, mb), device=self.device) if self._old_logp else None
        )  # [B, R]
        ref = torch.tensor(stack_rows(self._ref_logp, mb), device=self.device) if self._ref_logp else None
        advantages = torch.tensor(mb.advantages, device=self.device)  # [B] or [B, R]
        return actor_objective(self.objective, logits, tokens, mask, old, ref, advantages, scale)

    def _on_policy(self) -> bool:
        """One PPO epoch of one optimizer step: the update sees exactly the policy that scored the batch.

        Not when the KL goes into the reward: `token_kl` needs the old log-probs before the update.
        """
        return self.recipe.on_policy_update

    def _temperature(self) -> float:
        temperature = self.recipe.worker.rollout.temperature
        return temperature if temperature > 0 else 1.0

    # ---- checkpoints -------------------------------------------------------------------------

    def save_checkpoint(self, step_dir: str) -> None:
        """Write this rank's model/optimizer shards and RNG state into `step_dir` (collective)."""
        from sophiavl_cli.engine.checkpoint.sharded import save_rank_extras, save_sharded
        from sophiavl_cli.engine.parallel.rng import capture_rng

        with self.offload.on_device(self.policy, self.optimizer):
            save_sharded(Path(step_dir), self.policy, self.optimizer, trainable_only=self._adapter_only)
        save_rank_extras(
            Path(step_dir),
            self.rank,
            {"rng": capture_rng(), "optimizer_step": self.optimizer_step},
            self.world_size,
        )
        dist.barrier()

    @property
    def _adapter_only(self) -> bool:
        """LoRA checkpoints hold the adapter alone: the frozen base comes from worker.actor.model_path."""
        return self.recipe.worker.actor.lora.rank > 0

    def load_checkpoint(self, step_dir: str, step: int, optimizer_step: int) -> None:
        """Load shards (any saved world size), restore RNG when the layout matches, refresh the rollout copy."""
        from sophiavl_cli.engine.checkpoint.sharded import load_rank_extras, load_sharded
        from sophiavl_cli.engine.parallel.rng import restore_rng

        with self.offload.on_device(self.policy, self.optimizer):
            load_sharded(Path(step_dir), self.policy, self.optimizer, trainable_only=self._adapter_only)
        extras = load_rank_extras(Path(step_dir), self.rank, self.world_size)
        if extras is not None:
            restore_rng(extras["rng"])
        else:  # another world size: continue deterministically from the seeds
            torch.manual_seed(derive_seed(self.recipe.trainer.seed, step, self.rank))
        self.optimizer_step = optimizer_step
        self.sync_weights()

    def shutdown(self) -> None:
        close = getattr(getattr(self, "rollout", None), "close", None)
        if close is not None:  # vLLM leaves its groups (and the default one) itself, before we do
            close()
        fsdp.close_process_group()
