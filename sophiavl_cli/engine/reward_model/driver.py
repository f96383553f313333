"""`train_rm(recipe)`: supervised fine-tuning of the thinking reward model on the training engine.

The same parts as `sophiavl train`, composed for SFT: Ray and a placement group of FSDP2 workers
(`cluster.WorkerGroup` of `RMWorker`s), the resumable seeded `PromptDataLoader`, `CheckpointManager`
(DCP shards + driver state + HF files, so `sophiavl merge` and `--resume` work unchanged), the
loggers, the metrics registry, timed phases and PNG curves. One step: encode the batch's rows on
the driver (`encode`), spread them over ranks by tokens, one optimizer step on every rank
(`update`). Held-out evaluation every `trainer.val_freq` steps and at the end (`val`): every score
choice is scored token by token and the prediction is the choice greedy constrained decoding
picks (`rm_prompting.greedy_choice`, what the served model answers), and `rewards.rm_quality` turns predictions
and labels into MAE, within-0.1, Spearman; the final report (with the confusion table and the
calibration PNG) lands in `<run_dir>/rm_eval/`.

Usage:
    sophiavl train-rm recipes/thinking-rm-quickstart.yaml
    sophiavl train-rm recipes/thinking-rm.yaml data.train_files=thinking156k@train
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.data.rm_rows import RMRow
from sophiavl_cli.engine.checkpoint.layout import checkpoints_dir
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.driver import (
    planned_steps,
    resolve_device,
    restore_driver_state,
)
from sophiavl_cli.engine.lifecycle.preflight import preflight_rm
from sophiavl_cli.engine.lifecycle.run_folder import check_resumed_model, run_dir_of
from sophiavl_cli.engine.lifecycle.signals import StopFlag, take_back
from sophiavl_cli.engine.loop import Loop, RunBase, RunResult, run_steps, run_trainer
from sophiavl_cli.engine.observe.timing import StepTimer
from sophiavl_cli.engine.parallel import cluster
from sophiavl_cli.engine.reward_model.prompting import RMEncoder, greedy_choice
from sophiavl_cli.engine.reward_model.worker import RMWorker, RMWorkers, RMWorkerSpec, split_evenly
from sophiavl_cli.engine.workers.batching import balance_across_ranks
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import atomic_write_json, atomic_write_text
from sophiavl_cli.metrics.keys import TRAIN_EPOCH, VAL_RM_MAE, VAL_RM_SPEARMAN, VAL_RM_WITHIN
from sophiavl_cli.metrics.registry import reduce_records
from sophiavl_cli.rewards.rm_quality import RMQuality, rm_quality, write_report
from sophiavl_cli.rewards.score_parse import SCORE_CHOICES, SCORES

EVAL_DIRNAME = "rm_eval"


@dataclass(kw_only=True)
class RMRun(RunBase):
    """A reward-model run ready to train (`build_rm_run`)."""

    recipe: RMRecipe
    encoder: RMEncoder
    workers: RMWorkers


def train_rm(
    recipe: RMRecipe, *, ray_address: str | None = None, resume: str = "auto", status: Any = None
) -> RunResult:
    """Fine-tune the reward model as the recipe says; returns where everything went."""
    return run_trainer(
        recipe,
        checks=preflight_rm,
        build=build_rm_run,
        fit=fit_rm,
        ray_address=ray_address,
        resume=resume,
        status=status,
    )


def build_rm_run(
    recipe: RMRecipe, stack: ExitStack, *, ray_address: str | None, checkpoint: Path | None, say: Any
) -> RMRun:
    """Data, model files, Ray, workers, `checkpoint` restored (None: fresh) and loggers; teardown on `stack`."""
    from sophiavl_cli.data.loader import PromptDataLoader
    from sophiavl_cli.data.rm_check import check_rm_rows
    from sophiavl_cli.data.rm_rows import load_rm_rows
    from sophiavl_cli.engine.observe.loggers import build_loggers
    from sophiavl_cli.models.processing import VLProcessor
    from sophiavl_cli.models.resolve import resolve_model

    run_dir = run_dir_of(recipe.trainer)  # created by its lock; recipe.yaml is written once workers run
    recipe_yaml = dump_recipe(recipe)

    say("loading data and model files")
    model_dir = resolve_model(recipe.model.model_path)
    if checkpoint is not None:
        check_resumed_model(model_dir, checkpoint, "model.model_path")
    encoder = RMEncoder(VLProcessor.from_pretrained(model_dir))
    registry = Path(recipe.data.registry) if recipe.data.registry else None
    rows = load_rm_rows(recipe.data.train_files, registry=registry)
    for line in check_rm_rows(rows).warnings():  # the pre-flight check's findings, said once
        say(f"data check: {line}")
    kept = [row for row in rows if encoder.length(row) <= recipe.data.max_length]
    if len(kept) < len(rows):
        say(
            f"dropped {len(rows) - len(kept)} training rows longer than data.max_length={recipe.data.max_length}"
        )
    val_rows: list[RMRow] = []
    if recipe.data.val_files and (recipe.trainer.val_freq > 0 or recipe.trainer.val_before_train):
        val_rows = load_rm_rows(recipe.data.val_files, registry=registry, limit=recipe.data.max_val_rows)
    loader = PromptDataLoader(
        kept, batch_size=recipe.data.batch_size, shuffle=recipe.data.shuffle, seed=recipe.data.seed
    )
    total_steps = planned_steps(recipe.trainer, len(loader))
    start_step, optimizer_step = restore_driver_state(checkpoint, loader, recipe.optimizer_steps_per_step)

    say("starting Ray workers")
    started = cluster.connect(ray_address)
    take_back()  # ray.init took SIGTERM for itself (a silent exit 15): the run's flag handles it again
    stack.callback(cluster.disconnect, started)
    device = resolve_device(recipe.trainer.device)
    workers = RMWorkers(cluster.WorkerGroup(recipe.world_size, device, worker_cls=RMWorker))
    stack.callback(workers.shutdown)
    host, port = workers.rendezvous_address()
    tokenizer = encoder.processor.tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise UserError(f"{model_dir}: the tokenizer names neither a pad nor an EOS token; add one")
    workers.setup(
        RMWorkerSpec(
            recipe=recipe,
            model_dir=str(model_dir),
            master_addr=host,
            master_port=port,
            device=device,
            optimizer_steps_total=max(total_steps, 1),
            pad_token_id=int(pad),
            collective_timeout_s=recipe.trainer.collective_timeout,
        )
    )
    atomic_write_text(run_dir / "recipe.yaml", recipe_yaml)
    atomic_write_json(run_dir / "workers.json", workers.describe(), indent=1)
    if checkpoint is not None:
        say(f"resuming from {checkpoint}")
        workers.load_checkpoint(checkpoint, start_step, optimizer_step)
    loggers = build_loggers(recipe, run_dir, resume_step=start_step)  # type: ignore[arg-type]
    stack.callback(loggers.close)
    return RMRun(
        recipe=recipe,
        run_dir=run_dir,
        model_dir=model_dir,
        encoder=encoder,
        workers=workers,
        loader=loader,
        val_rows=val_rows,
        loggers=loggers,
        manager=CheckpointManager(checkpoints_dir(run_dir), recipe.trainer.save_limit),
        total_steps=total_steps,
        start_step=start_step,
        recipe_yaml=recipe_yaml,
        say=say,
    )


def fit_rm(run: RMRun, stack: ExitStack, stop: StopFlag | None = None) -> RunResult:
    """The SFT loop (`engine/loop.py`) over `sft_step`, held-out evaluation and `save_rm_checkpoint`,
    then curves and the final report. `stop` as in `driver.fit`."""
    from sophiavl_cli.engine.observe.curves import plot_curves

    trainer = run.recipe.trainer
    if stop is None:
        stop = stack.enter_context(StopFlag(trainer.stop_grace_s))
    timer = StepTimer()
    latest: list[RMQuality] = []  # the last evaluation, for the final report

    def one_step(step: int) -> dict[str, float]:
        timer.reset()
        metrics = sft_step(run, run.loader.next_batch(), timer) | timer.metrics()
        metrics[TRAIN_EPOCH] = float(run.loader.epoch)
        return metrics

    def validation(step: int) -> dict[str, float]:
        quality = evaluate(run)
        if step > 0:
            latest[:] = [quality]
        return quality_metrics(quality)

    loop = Loop(
        trainer=trainer,
        loggers=run.loggers,
        run_dir=run.run_dir,
        start_step=run.start_step,
        total_steps=run.total_steps,
        step=one_step,
        save=lambda step: save_rm_checkpoint(run, step),
        validate=validation if run.val_rows else None,
    )
    result = run_steps(loop, stop, stack)
    if latest and result.last_step == run.total_steps:
        write_report(
            latest[0], run.run_dir / EVAL_DIRNAME, title=f"{trainer.experiment_name}, step {result.last_step}"
        )
    metrics_file = run.run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        plot_curves(metrics_file, run.run_dir / "curves")
    return result


def sft_step(run: RMRun, rows: list[RMRow], timer: StepTimer) -> dict[str, float]:
    """Encode the rows, spread them over ranks by tokens, one optimizer step everywhere."""
    with timer("encode"):
        sequences = [encoded.sequence for encoded in run.encoder.encode_batch(rows)]
        assignment = balance_across_ranks([s.num_tokens for s in sequences], run.workers.world_size)
        per_rank = [[sequences[i] for i in positions] for positions in assignment]
    total = sum(len(s.response_ids) for s in sequences)
    with timer("update"):
        results = run.workers.sft_step(per_rank, total)
    return reduce_records(results)


def evaluate(run: RMRun) -> RMQuality:
    """Predict every held-out row's score as constrained greedy decoding would, and compare."""
    rows = run.val_rows
    sequences = run.encoder.choice_sequences(rows)
    per_rank = split_evenly(sequences, run.workers.world_size, run.recipe.model.micro_batch_size_per_device)
    logprobs = run.workers.response_logprobs(per_rank)
    n = len(SCORE_CHOICES)
    choices = [sequences[c].response_ids for c in range(n)]
    predictions = [
        float(SCORES[greedy_choice(choices, [logprobs[r * n + c] for c in range(n)])])
        for r in range(len(rows))
    ]
    return rm_quality([row.score for row in rows], predictions)


def quality_metrics(quality: RMQuality) -> dict[str, float]:
    return {VAL_RM_MAE: quality.mae, VAL_RM_WITHIN: quality.within, VAL_RM_SPEARMAN: quality.spearman}


def save_rm_checkpoint(run: RMRun, step: int) -> Path:
    """Every rank's shards, then the driver state and the HF files (the layout `sophiavl merge` reads)."""
    save_start = time.perf_counter()
    tmp = run.manager.begin(step)
    run.workers.save_checkpoint(tmp)
    state = {
        "step": step,
        "optimizer_step": step * run.recipe.optimizer_steps_per_step,
        "loader": run.loader.state_dict(),
        "total_steps": run.total_steps,
        "world_size": run.recipe.world_size,
    }
    path = run.manager.commit(tmp, step, state, hf_source_dir=run.model_dir, recipe_yaml=run.recipe_yaml)
    run.say(f"saved {path} ({time.perf_counter() - save_start:.1f} s)")
    return path
