"""One training step, driven from the single controller. Each phase is a `timer(...)` block whose
name is its `timing/<name>` metric:

    gen     prompts -> n rollouts per prompt on the workers' rollout engines
    reward  outcome scores; the thinking-RM calls are submitted here and collected after `ref`
    shard   sequences spread over ranks, token-balanced, and the shared micro-batch plan
    old     old log-probs on the workers (overlapping the RM calls)
    ref     reference log-probs (skipped when the KL term is off)
    adv     Trust-GRPO rewards per group and group advantages
    update  PPO-clip + KL + entropy, gradient accumulation, grad clip, AdamW
    sync    FSDP2 full tensors -> every worker's rollout copy

then the tail: `dump_rollouts` (every trainer.rollout_dump_freq steps) and `step_metrics`.
Everything is ordered by position (prompt i, sample k -> row i * n + k), never by arrival, so a
step is a function of (weights, batch, step seed) only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import TimeoutError as FuturesTimeout
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sophiavl_cli.algo.dynamic_sampling import GroupPool
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.engine.observe.throughput import FlopsModel
from sophiavl_cli.engine.observe.timing import StepTimer
from sophiavl_cli.engine.prompting import BuiltPrompt, PromptBuilder
from sophiavl_cli.engine.rewarding import (
    OutcomeBatch,
    StepRewards,
    combine,
    reward_metrics,
    score_outcomes,
    thinking_requests,
    with_token_kl,
    worker_advantages,
)
from sophiavl_cli.engine.rollout import RolloutOutput, SamplingParams, derive_seed
from sophiavl_cli.engine.workers.batching import (
    TrainSequence,
    balance_across_ranks,
    minibatch_slices,
    shared_micro_batch_count,
    spread_across_ranks,
)
from sophiavl_cli.engine.workers.facade import Workers
from sophiavl_cli.fileio import atomic_write_jsonl
from sophiavl_cli.metrics.keys import (
    PERF_RESPONSE_TOKENS,
    PERF_TOKENS,
    PERF_UPDATE_FLOPS,
    PERF_UPDATE_TOKENS,
    RESPONSE_CLIP_RATIO,
    RESPONSE_LENGTH_MAX,
    RESPONSE_LENGTH_MEAN,
    RM_CALLS,
    RM_FAILURES,
    SAMPLING_DROPPED_GROUPS,
    SAMPLING_ROUNDS,
    SAMPLING_TOPPED_UP_GROUPS,
    TRUST_THINKING_COVERAGE,
)
from sophiavl_cli.metrics.registry import reduce_records
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.rewards.failure_policy import FailureMonitor
from sophiavl_cli.rewards.outcome import OutcomeScorer
from sophiavl_cli.rewards.thinking import ThinkingResult, ThinkingRewardClient, ThinkingSample


@dataclass
class StepContext:
    """What every step uses; built once by the driver."""

    recipe: Recipe
    workers: Workers
    processor: VLProcessor
    builder: PromptBuilder
    scorer: OutcomeScorer
    rm: ThinkingRewardClient | None
    monitor: FailureMonitor | None
    total_steps: int
    use_ref: bool
    dump_dir: Path | None = None  # decoded rollouts go here every trainer.rollout_dump_freq steps
    flops: FlopsModel | None = None  # the policy's shape, for perf/update_flops (MFU)
    next_rows: Callable[[], list[dict[str, Any]]] | None = None  # more rows, for dynamic sampling
    waiting: Callable[[str | None], None] | None = None  # says on the progress line what the step waits on

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
    assignment = spread_across_ranks([len(p.prompt.prompt_ids) for p in prompts], ctx.workers.world_size)
    results = ctx.workers.generate(
        [[prompts[i].prompt for i in rows] for rows in assignment], n, sampling, seed
    )
    outputs = [o for rank_outputs in results for o in rank_outputs]
    return sorted(outputs, key=lambda o: (o.prompt_index, o.sample_index))


@dataclass
class Rollouts:
    """A batch's rollouts in (prompt, sample) order (row i = prompt i // n) with their outcome scores
    and the thinking-RM calls submitted for them."""

    prompts: list[BuiltPrompt]
    outputs: list[RolloutOutput]
    responses: list[str]
    outcome: OutcomeBatch
    positions: list[int]  # rows sent to the thinking RM
    pending: Any = None  # Future of the RM results, or None
    results: list[ThinkingResult] | None = None  # the RM results once collected

    @property
    def owner(self) -> list[BuiltPrompt]:
        """The prompt of each rollout."""
        return [self.prompts[o.prompt_index] for o in self.outputs]

    def collect(self, waiting: Callable[[str | None], None] | None = None) -> list[ThinkingResult]:
        """The RM results (waits for them once). While they are late, `waiting` hears every
        `WAIT_NOTE_S` seconds how long the step has waited (and None once they are in)."""
        if self.results is None:
            self.results = (
                [] if self.pending is None else _wait_for(self.pending, len(self.positions), waiting)
            )
        return self.results


WAIT_NOTE_S = 2.0  # how often the progress line is told that the step still waits on the reward model


def _wait_for(pending: Any, calls: int, waiting: Callable[[str | None], None] | None) -> list[ThinkingResult]:
    if waiting is None:
        return pending.result()
    start = time.monotonic()
    try:
        while True:
            try:
                return pending.result(timeout=WAIT_NOTE_S)
            except FuturesTimeout:
                plural = "s" if calls != 1 else ""
                waiting(
                    f"waiting on the reward model ({calls} call{plural}, {time.monotonic() - start:.0f} s)"
                )
    finally:
        waiting(None)


def sample_round(
    ctx: StepContext, rows: list[dict[str, Any]], seed: int, timer: StepTimer, trust_on: bool
) -> Rollouts:
    """Generate, decode and score one batch of rows; the thinking-RM calls are submitted, not awaited."""
    recipe, n = ctx.recipe, ctx.n
    with timer("gen"):
        prompts = ctx.builder.build_batch(rows)
        outputs = generate(ctx, prompts, n, ctx.sampling(), seed)
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
    return Rollouts(prompts, outputs, responses, outcome, positions, pending)


def dynamic_rollouts(
    ctx: StepContext, rows: list[dict[str, Any]], step: int, timer: StepTimer, trust_on: bool
) -> tuple[Rollouts, dict[str, float]]:
    """DAPO dynamic sampling: rounds of `rollout_batch_size` prompts until that many groups have
    differing final rewards (or the round cap), then those groups in (round, prompt) order.

    Round 0 uses the step's seed and rows; round r > 0 the seed (seed, step, r) and the loader's
    next rows, so a step is a function of (weights, data position, seed).
    """
    recipe, n = ctx.recipe, ctx.n
    cap = recipe.algorithm.dynamic_sampling.max_extra_rounds
    pool = GroupPool(target=recipe.data.rollout_batch_size)
    rounds: list[Rollouts] = []
    while True:
        index = len(rounds)
        seed = (
            derive_seed(recipe.trainer.seed, step)
            if index == 0
            else derive_seed(recipe.trainer.seed, step, index)
        )
        batch = sample_round(ctx, rows if index == 0 else ctx.next_rows(), seed, timer, trust_on)  # type: ignore[misc]
        with timer("reward"):
            rewards = combine(
                recipe,
                batch.outcome.overall,
                n,
                step,
                ctx.total_steps,
                batch.positions,
                batch.collect(ctx.waiting),
                [len(o.response_ids) for o in batch.outputs],
            )
        pool.offer([rewards.final[g * n : (g + 1) * n].tolist() for g in range(len(batch.prompts))])
        rounds.append(batch)
        if pool.full or index >= cap or ctx.next_rows is None:
            break
    chosen = pool.take()
    metrics = {
        SAMPLING_ROUNDS: float(len(rounds)),
        SAMPLING_DROPPED_GROUPS: float(len(pool.dropped)),
        SAMPLING_TOPPED_UP_GROUPS: float(max(0, len(chosen) - len(pool.kept))),
    }
    return merge_groups(rounds, chosen, n), metrics


def merge_groups(rounds: list[Rollouts], chosen: list[tuple[int, int]], n: int) -> Rollouts:
    """The chosen (round, group) groups as one batch, renumbered 0.. in the given order."""
    prompts, outputs, responses, rows, positions, results = [], [], [], [], [], []
    for new_index, (r, g) in enumerate(chosen):
        batch = rounds[r]
        prompts.append(batch.prompts[g])
        for k in range(n):
            i = g * n + k
            rows.append((r, i))
            outputs.append(replace(batch.outputs[i], prompt_index=new_index))
            responses.append(batch.responses[i])
    position_of = {(r, i): new for new, (r, i) in enumerate(rows)}
    for r, batch in enumerate(rounds):
        for i, result in zip(batch.positions, batch.collect(), strict=True):
            if (r, i) in position_of:
                positions.append(position_of[(r, i)])
                results.append(result)
    order = sorted(range(len(positions)), key=positions.__getitem__)
    outcome = OutcomeBatch(
        *(
            np.asarray([getattr(rounds[r].outcome, f)[i] for r, i in rows])
            for f in ("overall", "format", "accuracy")
        )
    )
    return Rollouts(
        prompts,
        outputs,
        responses,
        outcome,
        [positions[j] for j in order],
        results=[results[j] for j in order],
    )


def run_step(ctx: StepContext, rows: list[dict[str, Any]], step: int, timer: StepTimer) -> dict[str, float]:
    """One training step on a batch of rows; returns the step's metrics (timing added by the caller)."""
    recipe, n = ctx.recipe, ctx.n
    trust_on = recipe.algorithm.trust.enable and ctx.rm is not None

    sampling_metrics: dict[str, float] = {}
    if recipe.algorithm.dynamic_sampling.enable:
        rollouts, sampling_metrics = dynamic_rollouts(ctx, rows, step, timer, trust_on)
    else:
        rollouts = sample_round(ctx, rows, derive_seed(recipe.trainer.seed, step), timer, trust_on)
    outcome = rollouts.outcome
    lengths = [len(o.response_ids) for o in rollouts.outputs]

    with timer("shard"):
        sequences = train_sequences(rollouts, recipe.worker.rollout.use_rollout_logprobs)
        shards = shard_sequences(sequences, recipe, ctx.workers.world_size)
        experience_count, update_counts = micro_batch_plan(sequences, shards, recipe)
    with timer("old"):
        ctx.workers.set_sequences(
            [[sequences[i] for i in shard] for shard in shards], experience_count, update_counts
        )
        ctx.workers.compute_old_logprobs()
    if ctx.use_ref:
        with timer("ref"):
            ctx.workers.compute_ref_logprobs()

    with timer("reward"):
        results = rollouts.collect(ctx.waiting)
    with timer("adv"):
        rewards = combine(
            recipe, outcome.overall, n, step, ctx.total_steps, rollouts.positions, results, lengths
        )
        if recipe.algorithm.kl_in_reward and ctx.use_ref:
            token_kl: list[Any] = [None] * len(sequences)
            for shard, values in zip(shards, ctx.workers.token_kl(), strict=True):
                for i, kl in zip(shard, values, strict=True):
                    token_kl[i] = kl
            rewards = with_token_kl(recipe, rewards, np.asarray(lengths), n, token_kl)
        payload = worker_advantages(rewards.token_advantages, lengths)  # type: ignore[arg-type]

    with timer("update"):
        advantages = [[payload[i] for i in shard] for shard in shards]
        actor = ctx.workers.update(advantages, recipe.updates_per_step)
    with timer("sync"):
        ctx.workers.sync_weights()

    every = recipe.trainer.rollout_dump_freq
    if ctx.dump_dir is not None and every > 0 and step % every == 0:
        dump_rollouts(ctx.dump_dir / f"step_{step:06d}.jsonl", step, rollouts, outcome, rewards)
    return step_metrics(ctx, rollouts, sequences, outcome, rewards, actor, trust_on) | sampling_metrics


def train_sequences(rollouts: Rollouts, use_rollout_logprobs: bool) -> list[TrainSequence]:
    """What the workers train on, one per rollout, in rollout order."""
    return [
        TrainSequence(
            index=i,
            prompt_ids=rollouts.owner[i].prompt.prompt_ids,
            response_ids=o.response_ids,
            pixel_values=rollouts.owner[i].prompt.pixel_values,
            image_grid_thw=rollouts.owner[i].prompt.image_grid_thw,
            old_logprobs=o.logprobs if use_rollout_logprobs else None,
        )
        for i, o in enumerate(rollouts.outputs)
    ]


def step_metrics(
    ctx: StepContext,
    rollouts: Rollouts,
    sequences: list[TrainSequence],
    outcome: OutcomeBatch,
    rewards: StepRewards,
    actor: list[dict[str, float]],
    trust_on: bool,
) -> dict[str, float]:
    """The step's metrics (timing and throughput are added by the driver); feeds the RM failure monitor."""
    metrics = reward_metrics(outcome, rewards, trust_on)
    metrics |= reduce_records(actor)
    metrics |= response_metrics(rollouts.outputs, ctx.recipe.data.max_response_length)
    if trust_on and ctx.rm is not None:
        stats = ctx.rm.stats(reset=True)
        metrics |= stats
        if ctx.monitor is not None:
            ctx.monitor.update(
                int(stats.get(RM_CALLS, 0)),
                int(stats.get(RM_FAILURES, 0)),
                coverage=metrics.get(TRUST_THINKING_COVERAGE),
            )
    metrics[PERF_TOKENS] = float(sum(s.num_tokens for s in sequences))
    metrics[PERF_RESPONSE_TOKENS] = float(sum(len(o.response_ids) for o in rollouts.outputs))
    epochs = ctx.recipe.worker.actor.ppo_epochs
    metrics[PERF_UPDATE_TOKENS] = metrics[PERF_TOKENS] * epochs
    if ctx.flops is not None:
        metrics[PERF_UPDATE_FLOPS] = epochs * ctx.flops.training_flops(
            (s.num_tokens, len(s.response_ids)) for s in sequences
        )
    return metrics


def dump_rollouts(
    path: Path, step: int, rollouts: Rollouts, outcome: OutcomeBatch, rewards: StepRewards
) -> None:
    """Every rollout of the step, decoded, with its rewards and advantage (trainer.rollout_dump_freq)."""
    owner = rollouts.owner
    records = [
        {
            "step": step,
            "prompt_index": o.prompt_index,
            "sample_index": o.sample_index,
            "problem_type": owner[i].problem_type,
            "prompt": owner[i].text,
            "images": len(owner[i].images),
            "response": rollouts.responses[i],
            "answer": owner[i].answer,
            "outcome": float(outcome.overall[i]),
            "thinking": rewards.thinking[i],
            "final": float(rewards.final[i]),
            "advantage": float(rewards.advantages[i]),
            "truncated": o.truncated,
        }
        for i, o in enumerate(rollouts.outputs)
    ]
    atomic_write_jsonl(path, records)


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
    per_update = len(shards[0]) // recipe.updates_per_step
    update = [
        shared_micro_batch_count([lengths(shard[start : start + per_update]) for shard in shards], budget)
        for start in range(0, len(shards[0]), per_update)
    ]
    return experience, update


def response_metrics(outputs: list[RolloutOutput], max_length: int) -> dict[str, float]:
    lengths = np.asarray([len(o.response_ids) for o in outputs], dtype=np.float64)
    return {
        RESPONSE_LENGTH_MEAN: float(lengths.mean()),
        RESPONSE_LENGTH_MAX: float(lengths.max()),
        RESPONSE_CLIP_RATIO: float(np.mean([o.truncated for o in outputs])),
    }
