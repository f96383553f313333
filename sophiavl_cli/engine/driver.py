"""The single controller: `train(recipe)` runs a whole Trust-GRPO run, top to bottom.

The driver owns order and state: the data position, the step counter, the reward model client,
the anneal schedule, logging and the checkpoint schedule. The workers (Ray actors, one per rank)
own the tensors. One step is `engine.step.run_step`; this module sets the run up, loops, validates,
checkpoints (every `save_freq` steps, at the end, and after the step in flight on Ctrl-C or
SIGTERM, see engine/signals.py) and tears everything down, also on errors.

Usage:
    sophiavl train recipes/quickstart.yaml
    sophiavl train recipes/fullsets.yaml trainer.max_steps=10 --ray-address 10.0.0.1:6379
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.engine import cluster, quiet
from sophiavl_cli.engine.checkpoint import CheckpointManager, checkpoints_dir, resolve_resume
from sophiavl_cli.engine.objective import uses_reference
from sophiavl_cli.engine.preflight import finished_run, preflight
from sophiavl_cli.engine.prompting import PromptBuilder
from sophiavl_cli.engine.reaper import start_reaper
from sophiavl_cli.engine.rm_service import ThinkingService
from sophiavl_cli.engine.runlock import RunLock
from sophiavl_cli.engine.signals import StopFlag
from sophiavl_cli.engine.step import StepContext, run_step
from sophiavl_cli.engine.throughput import FlopsModel, peak_flops, throughput_metrics
from sophiavl_cli.engine.timing import StepTimer
from sophiavl_cli.engine.validation import validate
from sophiavl_cli.engine.worker import WorkerSpec
from sophiavl_cli.errors import UserError


@dataclass
class RunResult:
    """What `sophiavl train` prints at the end."""

    run_dir: Path
    first_step: int
    last_step: int
    total_steps: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: Path | None = None
    interrupted: bool = False
    stop_signal: int | None = None  # SIGINT or SIGTERM when `interrupted`
    seconds: float = 0.0


def run_dir_of(recipe: Recipe) -> Path:
    t = recipe.trainer
    return Path(t.output_dir) / t.project_name / t.experiment_name


def optimizer_steps_per_step(recipe: Recipe) -> int:
    return (
        recipe.data.rollout_batch_size // recipe.worker.actor.global_batch_size
    ) * recipe.worker.actor.ppo_epochs


class AlreadyFinished(UserError):
    """The run folder's last checkpoint already ends the run the recipe asks for (exit 0: nothing to do)."""

    exit_code = 0


def train(
    recipe: Recipe, *, ray_address: str | None = None, resume: str = "auto", status: Any = None
) -> RunResult:
    """Run training as the recipe says; returns where everything went. `status(text)` reports progress.

    Before anything starts: every pre-flight check at once, the run folder's lock (one trainer per
    folder), the checkpoint to resume (verified), and whether the run is already finished.
    """
    say = status or (lambda text: None)
    preflight(recipe, ray_address=ray_address)
    run_dir = run_dir_of(recipe)
    with RunLock(run_dir):
        checkpoint = resolve_resume(resume, run_dir, say)
        finished = finished_run(recipe, run_dir, checkpoint)
        if finished is not None:
            raise AlreadyFinished(finished)
        return _train_locked(recipe, run_dir, checkpoint, ray_address=ray_address, say=say)


def _train_locked(
    recipe: Recipe, run_dir: Path, checkpoint: Path | None, *, ray_address: str | None, say: Any
) -> RunResult:
    from sophiavl_cli.engine.curves import plot_curves
    from sophiavl_cli.engine.loggers import build_loggers
    from sophiavl_cli.models.processing import VLProcessor
    from sophiavl_cli.models.resolve import resolve_model
    from sophiavl_cli.rewards.failure_policy import FailureMonitor
    from sophiavl_cli.rewards.outcome import OutcomeScorer

    started_at = time.perf_counter()

    # ---- data, model files, rewards (no Ray yet: mistakes fail fast) ---------------------------
    say("loading data and model files")
    model_dir = resolve_model(recipe.worker.actor.model_path)
    processor = VLProcessor.from_pretrained(
        model_dir, min_pixels=recipe.data.min_pixels, max_pixels=recipe.data.max_pixels
    )
    builder = PromptBuilder(processor, recipe.data)
    scorer = OutcomeScorer(recipe.reward.custom, format_weight=recipe.reward.format_weight)
    loader, val_rows = load_data(recipe, builder, say)
    total_steps = len(loader) * recipe.trainer.total_epochs
    if recipe.trainer.max_steps is not None:
        total_steps = min(total_steps, recipe.trainer.max_steps)

    start_step, optimizer_step = 0, 0
    driver_state: dict[str, Any] = {}
    if checkpoint is not None:
        driver_state = CheckpointManager.load_driver_state(checkpoint)
        start_step = int(driver_state["step"])
        optimizer_step = int(
            driver_state.get("optimizer_step", start_step * optimizer_steps_per_step(recipe))
        )
        loader.load_state_dict(driver_state["loader"])

    with ExitStack() as stack:
        stack.callback(start_reaper().stop)  # first in, last out: after Ray and the RM are stopped
        stop = stack.enter_context(StopFlag(recipe.trainer.stop_grace_s))
        rm_service = None
        if recipe.algorithm.trust.enable:
            rm_service = ThinkingService(recipe.reward.thinking)
            stack.callback(rm_service.close)
            rm_service.start()

        say("starting Ray workers")
        quiet.install(ray_logs=True)
        started = cluster.connect(ray_address)
        stack.callback(cluster.disconnect, started)
        stop.install()  # after ray.init, which takes SIGTERM for itself
        device = _resolve_device(recipe.trainer.device)
        for note in ignored_options(recipe, device):
            say(note)
        group = cluster.WorkerGroup(recipe.world_size, device)
        stack.callback(group.shutdown)
        spec = _worker_spec(recipe, model_dir, group, device, total_steps, processor)
        group.run("setup", spec)
        workers = group.run("describe")
        _write_atomic(run_dir / "workers.json", json.dumps(workers, indent=1) + "\n")
        peak = peak_flops(str(workers[0]["device_name"]), os.environ.get("SOPHIAVL_PEAK_FLOPS"))
        if checkpoint is not None:
            say(f"resuming from {checkpoint}")
            group.run("load_checkpoint", str(checkpoint), start_step, optimizer_step)

        rm_client = rm_service.client() if rm_service is not None else None
        ctx = StepContext(
            recipe=recipe,
            group=group,
            processor=processor,
            builder=builder,
            scorer=scorer,
            rm=rm_client,
            monitor=FailureMonitor.from_config(recipe.reward.thinking) if rm_client is not None else None,
            total_steps=total_steps,
            use_ref=spec.need_ref,
            dump_dir=run_dir / "rollouts",
            flops=FlopsModel.from_config(_model_config(model_dir)),
        )
        loggers = build_loggers(recipe, run_dir, resume_step=start_step)
        stack.callback(loggers.close)
        manager = CheckpointManager(checkpoints_dir(run_dir), recipe.trainer.save_limit)

        def save(step: int) -> Path:
            save_start = time.perf_counter()
            tmp = manager.begin(step)
            group.run("save_checkpoint", str(tmp))
            state = {
                "step": step,
                "optimizer_step": step * optimizer_steps_per_step(recipe),
                "loader": loader.state_dict(),
                "total_steps": total_steps,
                "world_size": recipe.world_size,
            }
            path = manager.commit(tmp, step, state, hf_source_dir=model_dir, recipe_yaml=dump_recipe(recipe))
            say(f"saved {path} ({time.perf_counter() - save_start:.1f} s)")
            return path

        result = RunResult(
            run_dir=run_dir, first_step=start_step + 1, last_step=start_step, total_steps=total_steps
        )
        if recipe.trainer.val_before_train and val_rows and start_step == 0:
            metrics, samples = validate(ctx, val_rows, 0)
            loggers.log(0, metrics)
            loggers.log_generations(0, samples)

        _write_atomic(run_dir / "recipe.yaml", dump_recipe(recipe))  # only once the run has really started
        timer = StepTimer()
        saved_step = start_step
        stack.enter_context(loggers.progress(total_steps, start_step))
        for step in range(start_step + 1, last_step_of_this_run(recipe, start_step, total_steps) + 1):
            if stop.requested:  # asked to stop during setup or validation: no new step
                result.interrupted, result.stop_signal = True, stop.signum
                break
            timer.reset()
            metrics = run_step(ctx, loader.next_batch(), step, timer)
            stop.step_done()
            metrics |= timer.metrics()
            metrics |= throughput_metrics(metrics, recipe.world_size, peak)
            metrics["train/epoch"] = float(loader.epoch)
            if val_rows and recipe.trainer.val_freq > 0 and _due(step, recipe.trainer.val_freq, total_steps):
                val_start = time.perf_counter()
                val_metrics, samples = validate(ctx, val_rows, step)
                metrics |= val_metrics | {"timing/val": time.perf_counter() - val_start}
                loggers.log_generations(step, samples)
            loggers.log(step, metrics)
            result.last_step, result.last_metrics = step, metrics
            if stop.requested or _due(step, recipe.trainer.save_freq, total_steps):
                result.checkpoint = save(step)
                saved_step = step
            if stop.requested:
                result.interrupted, result.stop_signal = True, stop.signum
                break
        if result.last_step > saved_step:
            result.checkpoint = save(result.last_step)
        loggers.stop()
        loggers.close()
        metrics_file = run_dir / "metrics.jsonl"
        if metrics_file.is_file():
            plot_curves(metrics_file, run_dir / "curves")
    result.seconds = time.perf_counter() - started_at
    return result


def last_step_of_this_run(recipe: Recipe, start_step: int, total_steps: int) -> int:
    """The step this invocation ends after: the run's last, or earlier with `trainer.stop_after_steps`.

    Stopping early changes nothing but where the loop ends (the end-of-loop save writes the
    checkpoint): the LR and annealing schedules still span `total_steps`, so a run cut into
    pieces and resumed is the same run.
    """
    stop_after = recipe.trainer.stop_after_steps
    return total_steps if stop_after is None else min(total_steps, start_step + stop_after)


def load_data(recipe: Recipe, builder: PromptBuilder, say: Any) -> tuple[Any, list[dict[str, Any]]]:
    """The training loader (rows over data.max_prompt_length dropped) and the validation rows."""
    from sophiavl_cli.data.loader import PromptDataLoader, load_rows

    data = recipe.data
    registry = Path(data.registry) if data.registry else None
    train_rows = load_rows(data.train_files, registry=registry, extra_types=recipe.reward.custom)
    kept, dropped = builder.keep_fitting(train_rows)
    if dropped:
        say(f"dropped {dropped} training rows longer than data.max_prompt_length={data.max_prompt_length}")
        train_rows = train_rows.select(kept)
    val_rows: list[dict[str, Any]] = []
    if data.val_files and (recipe.trainer.val_freq > 0 or recipe.trainer.val_before_train):
        val_rows = list(load_rows(data.val_files, registry=registry, extra_types=recipe.reward.custom))
    loader = PromptDataLoader(
        train_rows, batch_size=data.rollout_batch_size, shuffle=data.shuffle, seed=data.seed
    )
    return loader, val_rows


def ignored_options(recipe: Recipe, device: str) -> list[str]:
    """One line per recipe option this run cannot honour (said once, at start)."""
    actor = recipe.worker.actor
    notes = []
    if device == "cuda" and actor.padding_free and importlib.util.find_spec("flash_attn") is None:
        notes.append(
            "worker.actor.padding_free: needs flash-attn installed (packing under sdpa is slower); padded"
        )
    if device == "cuda" and (actor.fsdp.offload_params or actor.fsdp.offload_optimizer):
        notes.append("worker.actor.fsdp.offload_*: CPU offload is not implemented yet; ignored")
    if not actor.fsdp.full_shard:
        notes.append("worker.actor.fsdp.full_shard=false: FSDP2 always shards fully here; ignored")
    return notes


def _due(step: int, every: int, total: int) -> bool:
    """Whether a periodic action runs after `step`: every `every` steps, and always at the end."""
    return step == total or (every > 0 and step % every == 0)


def _model_config(model_dir: Path) -> object:
    """The policy's transformers config (for its FLOPs per token)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir))


def _resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def _worker_spec(
    recipe: Recipe, model_dir: Path, group: cluster.WorkerGroup, device: str, total_steps: int, processor: Any
) -> WorkerSpec:
    import ray
    from transformers import GenerationConfig

    host, port = ray.get(group.actors[0].rendezvous_address.remote())
    eos: list[int] = []
    try:
        generation = GenerationConfig.from_pretrained(str(model_dir))
        eos = (
            [generation.eos_token_id]
            if isinstance(generation.eos_token_id, int)
            else list(generation.eos_token_id or [])
        )
    except OSError:  # no generation_config.json: the tokenizer's EOS alone
        pass
    tokenizer = processor.tokenizer
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos:
        eos.append(int(tokenizer.eos_token_id))
    if not eos:
        raise UserError(
            f"{model_dir}: neither generation_config.json nor the tokenizer names an EOS token; add one"
        )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    return WorkerSpec(
        recipe=recipe,
        model_dir=str(model_dir),
        master_addr=host,
        master_port=port,
        device=device,
        optimizer_steps_total=max(total_steps * optimizer_steps_per_step(recipe), 1),
        need_ref=uses_reference(recipe),
        eos_token_ids=eos,
        pad_token_id=int(pad),
        collective_timeout_s=recipe.trainer.collective_timeout,
    )


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
