"""One training step, driven from the single controller. Each phase is a `timer(...)` block whose
name is its `timing/<name>` metric:

    gen     prompts -> n rollouts per prompt on the workers' rollout engines
    reward  outcome scores; the thinking-RM calls are submitted here and collected after `ref`
    old     old log-probs on the workers (overlapping the RM calls)
    ref     reference log-probs (skipped when the KL term is off)
    adv     Trust-GRPO rewards per group and group advantages
    update  PPO-clip + KL + entropy, gradient accumulation, grad clip, AdamW
    sync    FSDP2 full tensors -> every worker's rollout copy

Everything is ordered by position (prompt i, sample k -> row i * n + k), never by arrival, so a
step is a function of (weights, batch, step seed) only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.engine.batching import (
    TrainSequence,
    balance_across_ranks,
    minibatch_slices,
    shared_micro_batch_count,
    spread_across_ranks,
)
from sophiavl_cli.engine.cluster import WorkerGroup
from sophiavl_cli.engine.prompting import BuiltPrompt, PromptBuilder
from sophiavl_cli.engine.rewarding import combine, reward_metrics, score_outcomes, thinking_requests
from sophiavl_cli.engine.rollout import RolloutOutput, SamplingParams, derive_seed
from sophiavl_cli.engine.throughput import FlopsModel
from sophiavl_cli.engine.timing import StepTimer
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.rewards.failure_policy import FailureMonitor
from sophiavl_cli.rewards.outcome import OutcomeScorer
from sophiavl_cli.rewards.thinking import ThinkingRewardClient, ThinkingSample


@dataclass
class StepContext:
    """What every step uses; built once by the driver."""

    recipe: Recipe
    group: WorkerGroup
    processor: VLProcessor
    builder: PromptBuilder
    scorer: OutcomeScorer
    rm: ThinkingRewardClient | None
    monitor: FailureMonitor | None
    total_steps: int
    use_ref: bool
    dump_dir: Path | None = None  # decoded rollouts go here every trainer.rollout_dump_freq steps
    flops: FlopsModel | None = None  # the policy's shape, for perf/update_flops (MFU)

    @property
    def n(self) -> int:
        return self.recipe.worker.rollout.n

    def sampling(self, *, validation: bool = False) -> SamplingParams:
        rollout = self.recipe.worker.rollout
        return SamplingParams(
            max_tokens=self.recipe.data.max_response_length,
            temperature=rollout.val_temperature if validation else rollout.temperature,
            top_p=1.0 if validation else rollout.top_p,
            top_k=-1 if validation else rollout.top_k,
            return_logprobs=rollout.use_rollout_logprobs and not validation,
        )


def generate(
    ctx: StepContext, prompts: list[BuiltPrompt], n: int, sampling: SamplingParams, seed: int
) -> list[RolloutOutput]:
    """n rollouts per prompt, prompts spread over ranks; returned in (prompt, sample) order."""
    world = ctx.group.world_size
    assignment = spread_across_ranks([len(p.prompt.prompt_ids) for p in prompts], world)
    per_rank = [([prompts[i].prompt for i in rows], n, sampling, seed) for rows in assignment]
    results = ctx.group.run_each("generate", per_rank)
    outputs = [o for rank_outputs in results for o in rank_outputs]
    return sorted(outputs, key=lambda o: (o.prompt_index, o.sample_index))


def run_step(ctx: StepContext, rows: list[dict[str, Any]], step: int, timer: StepTimer) -> dict[str, float]:
    """One Trust-GRPO step on a batch of rows; returns the step's metrics (timing added by the caller)."""
    recipe, n = ctx.recipe, ctx.n
    trust_on = recipe.algorithm.trust.enable and ctx.rm is not None

    with timer("gen"):
        prompts = ctx.builder.build_batch(rows)
        outputs = generate(ctx, prompts, n, ctx.sampling(), derive_seed(recipe.trainer.seed, step))
        responses = [ctx.processor.decode(o.response_ids) for o in outputs]

    with timer("reward"):
        owner = [prompts[o.prompt_index] for o in outputs]
        outcome = score_outcomes(
            ctx.scorer,
            responses,
            [p.answer for p in owner],
            [p.problem_type for p in owner],
            format_gate=recipe.reward.format_gate,
        )
        pending, positions = None, []
        if trust_on:
            prompt_texts = [ctx.processor.decode(p.prompt.prompt_ids) for p in prompts]

            def sample(i: int) -> ThinkingSample:
                return ThinkingSample(prompt_texts[i // n], responses[i], tuple(owner[i].images))

            samples, positions = thinking_requests(outcome.overall, n, recipe.algorithm.trust.mode, sample)
            pending = ctx.rm.submit(samples) if samples else None  # type: ignore[union-attr]

    sequences = [
        TrainSequence(
            index=i,
            prompt_ids=owner[i].prompt.prompt_ids,
            response_ids=o.response_ids,
            pixel_values=owner[i].prompt.pixel_values,
            image_grid_thw=owner[i].prompt.image_grid_thw,
            old_logprobs=o.logprobs if recipe.worker.rollout.use_rollout_logprobs else None,
        )
        for i, o in enumerate(outputs)
    ]
    shards = shard_sequences(sequences, recipe, ctx.group.world_size)
    plan = micro_batch_plan(sequences, shards, recipe)
    with timer("old"):
        futures = ctx.group.call_each(
            "set_sequences", [([sequences[i] for i in shard], *plan) for shard in shards]
        )
        ctx.group.wait(futures, "set_sequences")
        ctx.group.run("compute_old_logprobs")
    if ctx.use_ref:
        with timer("ref"):
            ctx.group.run("compute_ref_logprobs")

    with timer("reward"):
        results = pending.result() if pending is not None else []
    with timer("adv"):
        rewards = combine(recipe, outcome.overall, n, step, ctx.total_steps, positions, results)

    with timer("update"):
        num_updates = recipe.data.rollout_batch_size // recipe.worker.actor.global_batch_size
        per_rank = [([float(rewards.advantages[i]) for i in shard], num_updates) for shard in shards]
        actor = ctx.group.run_each("update", per_rank)
    with timer("sync"):
        ctx.group.run("sync_weights")

    metrics = reward_metrics(outcome, rewards, trust_on)
    metrics |= actor_metrics(actor)
    metrics |= response_metrics(outputs, recipe.data.max_response_length)
    if trust_on and ctx.rm is not None:
        stats = ctx.rm.stats(reset=True)
        metrics |= stats
        if ctx.monitor is not None:
            ctx.monitor.update(
                int(stats.get("rm/calls", 0)),
                int(stats.get("rm/failures", 0)),
                coverage=metrics.get("trust/thinking_coverage"),
            )
    every = recipe.trainer.rollout_dump_freq
    if ctx.dump_dir is not None and every > 0 and step % every == 0:
        records = [
            {
                "step": step,
                "prompt_index": o.prompt_index,
                "sample_index": o.sample_index,
                "problem_type": owner[i].problem_type,
                "prompt": owner[i].text,
                "images": len(owner[i].images),
                "response": responses[i],
                "answer": owner[i].answer,
                "outcome": float(outcome.overall[i]),
                "thinking": rewards.thinking[i],
                "final": float(rewards.final[i]),
                "advantage": float(rewards.advantages[i]),
                "truncated": o.truncated,
            }
            for i, o in enumerate(outputs)
        ]
        write_jsonl(ctx.dump_dir / f"step_{step:06d}.jsonl", records)
    metrics["perf/tokens"] = float(sum(s.num_tokens for s in sequences))
    metrics["perf/response_tokens"] = float(sum(len(o.response_ids) for o in outputs))
    epochs = recipe.worker.actor.ppo_epochs
    metrics["perf/update_tokens"] = metrics["perf/tokens"] * epochs
    if ctx.flops is not None:
        metrics["perf/update_flops"] = epochs * ctx.flops.training_flops(s.num_tokens for s in sequences)
    return metrics


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    """Write records as JSON lines atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    os.replace(tmp, path)


def shard_sequences(sequences: list[TrainSequence], recipe: Recipe, world_size: int) -> list[list[int]]:
    """Positions per rank, optimizer step by optimizer step, token-balanced within each.

    Every rank gets the same number of sequences per optimizer step (the recipe validator made
    them divide), so every rank runs the same micro-batches and collectives.
    """
    shards: list[list[int]] = [[] for _ in range(world_size)]
    num_prompts = len(sequences) // recipe.worker.rollout.n
    for rows in minibatch_slices(num_prompts, recipe.worker.actor.global_batch_size, recipe.worker.rollout.n):
        balanced = balance_across_ranks([sequences[i].num_tokens for i in rows], world_size)
        for rank, positions in enumerate(balanced):
            shards[rank].extend(rows[p] for p in positions)
    return shards


def micro_batch_plan(
    sequences: list[TrainSequence], shards: list[list[int]], recipe: Recipe
) -> tuple[int | None, list[int] | None]:
    """(log-prob pass, per optimizer step) micro-batch counts every rank runs under the token budget.

    (None, None) without `worker.actor.max_tokens_per_micro_batch`: fixed row counts. With it,
    each count is the most any rank needs, so every rank runs the same FSDP collectives.
    """
    budget = recipe.worker.actor.max_tokens_per_micro_batch
    if budget is None:
        return None, None

    def lengths(positions: list[int]) -> list[tuple[int, int]]:
        return [(len(sequences[i].prompt_ids), len(sequences[i].response_ids)) for i in positions]

    experience = shared_micro_batch_count([lengths(shard) for shard in shards], budget)
    per_update = len(shards[0]) // (recipe.data.rollout_batch_size // recipe.worker.actor.global_batch_size)
    update = [
        shared_micro_batch_count([lengths(shard[start : start + per_update]) for shard in shards], budget)
        for start in range(0, len(shards[0]), per_update)
    ]
    return experience, update


def actor_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """actor/* from the ranks' update metrics: means over ranks (skipped: max)."""
    keys = sorted({k for m in per_rank for k in m})
    out = {}
    for key in keys:
        values = [m[key] for m in per_rank if key in m]
        out[f"actor/{key}"] = float(max(values) if key == "skipped" else np.mean(values))
    return out


def response_metrics(outputs: list[RolloutOutput], max_length: int) -> dict[str, float]:
    lengths = np.asarray([len(o.response_ids) for o in outputs], dtype=np.float64)
    return {
        "response/length_mean": float(lengths.mean()),
        "response/length_max": float(lengths.max()),
        "response/clip_ratio": float(np.mean([o.truncated for o in outputs])),
    }
