"""In-training validation: greedy generations on the validation rows, outcome score per problem type.

Runs every `trainer.val_freq` steps (and before training with `trainer.val_before_train`) on the
same workers and rollout engines as training, one sample per prompt at `rollout.val_temperature`
(0 = greedy). Logs `val/outcome`, `val/format`, `val/outcome/<problem_type>` and a few sample
generations through the loggers.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from sophiavl_cli.engine.rewarding import score_outcomes
from sophiavl_cli.engine.rollout import derive_seed
from sophiavl_cli.engine.step import StepContext, generate
from sophiavl_cli.metrics.keys import VAL_FORMAT, VAL_OUTCOME, VAL_OUTCOME_FAMILY
from sophiavl_cli.metrics.registry import family_key


def validate(
    ctx: StepContext, rows: list[dict[str, Any]], step: int
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """(metrics, sample generations) over every validation row, in batches of data.val_batch_size."""
    recipe = ctx.recipe
    scores: list[float] = []
    formats: list[float] = []
    by_type: dict[str, list[float]] = defaultdict(list)
    samples: list[dict[str, Any]] = []
    size = recipe.data.val_batch_size
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        prompts = ctx.builder.build_batch(batch)
        seed = derive_seed(recipe.trainer.seed, step, start, 0x7A1)
        outputs = generate(ctx, prompts, 1, ctx.sampling(validation=True), seed)
        responses = [ctx.processor.decode(o.response_ids) for o in outputs]
        outcome = score_outcomes(
            ctx.scorer,
            responses,
            [p.answer for p in prompts],
            [p.problem_type for p in prompts],
            format_gate=recipe.reward.format_gate,
        )
        for prompt, response, score, fmt in zip(
            prompts, responses, outcome.overall, outcome.format, strict=True
        ):
            scores.append(float(score))
            formats.append(float(fmt))
            by_type[ctx.scorer.canonical(prompt.problem_type)].append(float(score))
            if len(samples) < recipe.trainer.val_generations_to_log:
                samples.append(
                    {
                        "step": step,
                        "problem_type": prompt.problem_type,
                        "prompt": prompt.text,
                        "response": response,
                        "answer": prompt.answer,
                        "score": float(score),
                    }
                )
    metrics = {VAL_OUTCOME: float(np.mean(scores)), VAL_FORMAT: float(np.mean(formats))}
    for problem_type, values in sorted(by_type.items()):
        metrics[family_key(VAL_OUTCOME_FAMILY, problem_type.replace(" ", "_"))] = float(np.mean(values))
    return metrics, samples
