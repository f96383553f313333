"""The single controller: `train(recipe)` runs a whole Trust-GRPO run, top to bottom.

The driver owns order and state: the data position, the step counter, the reward model client,
the anneal schedule, logging and the checkpoint schedule. The workers (Ray actors, one per rank)
own the tensors. `train` is `build_run` (everything before the first step) then `fit` (the loop:
`engine.step.run_step`, then validation and checkpoint saving as the timed phases `val` and `save`;
checkpoints every `save_freq` steps, at the end, and after the step in flight on Ctrl-C or SIGTERM,
see engine/lifecycle/signals.py); an `ExitStack` tears everything down, also on errors. Before any of it:
every pre-flight check at once (engine/lifecycle/preflight.py), the run folder's lock (engine/lifecycle/runlock.py),
the verified checkpoint to resume, whether the run is already finished, and a watchdog that ends
everything the trainer started if it dies uncleanly (engine/lifecycle/reaper.py).

Usage:
    sophiavl train recipes/quickstart.yaml
    sophiavl train recipes/fullsets.yaml trainer.max_steps=10 --ray-address 10.0.0.1:6379
"""

from __future__ import annotations

import os
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.config.recipe import DataConfig, Recipe, TrainerConfig
from sophiavl_cli.engine.checkpoint.layout import checkpoints_dir
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.lifecycle.preflight import preflight
from sophiavl_cli.engine.lifecycle.run_folder import check_resumed_model, run_dir_of
from sophiavl_cli.engine.lifecycle.signals import StopFlag, take_back
from sophiavl_cli.engine.loop import Loop, RunBase, RunResult, run_steps, run_trainer
from sophiavl_cli.engine.observe import quiet
from sophiavl_cli.engine.observe.stalls import ZeroAdvantageWatch
from sophiavl_cli.engine.observe.throughput import FlopsModel, peak_flops, throughput_metrics
from sophiavl_cli.engine.observe.timing import StepTimer
from sophiavl_cli.engine.parallel import cluster
from sophiavl_cli.engine.prompting import PromptBuilder
from sophiavl_cli.engine.reward_model.served import thinking_service
from sophiavl_cli.engine.step import StepContext, run_step
from sophiavl_cli.engine.validation import validate
from sophiavl_cli.engine.workers.build import compute_dtype
from sophiavl_cli.engine.workers.facade import Workers
from sophiavl_cli.engine.workers.objective import uses_reference
from sophiavl_cli.engine.workers.train_worker import WorkerSpec
from sophiavl_cli.fileio import atomic_write_json, atomic_write_text
from sophiavl_cli.metrics.keys import ADV_ZERO_FRACTION, TRAIN_EPOCH
from sophiavl_cli.models.families import linear_attention_kernel_note


@dataclass(kw_only=True)
class Run(RunBase):
    """A run ready to train: data, workers, reward model, loggers and where it starts (`build_run`)."""

    recipe: Recipe
    ctx: StepContext
    peak_flops: float | None


def train(
    recipe: Recipe, *, ray_address: str | None = None, resume: str = "auto", status: Any = None
) -> RunResult:
    """Run training as the recipe says; returns where everything went. `status(text)` reports progress."""
    return run_trainer(
        recipe,
        checks=preflight,
        build=build_run,
        fit=fit,
        ray_address=ray_address,
        resume=resume,
        status=status,
    )


def build_run(
    recipe: Recipe, stack: ExitStack, *, ray_address: str | None, checkpoint: Path | None, say: Any
) -> Run:
    """Everything before the first step; what must be torn down is registered on `stack`.

    Data, model files and rewards load before Ray starts, so mistakes fail fast.
    """
    from sophiavl_cli.engine.observe.loggers import build_loggers
    from sophiavl_cli.models.processing import VLProcessor
    from sophiavl_cli.models.resolve import resolve_model
    from sophiavl_cli.rewards.failure_policy import FailureMonitor
    from sophiavl_cli.rewards.outcome import OutcomeScorer

    run_dir = run_dir_of(recipe.trainer)  # created by its lock; recipe.yaml is written once workers run

    say("loading data and model files")
    model_dir = resolve_model(recipe.worker.actor.model_path)
    if checkpoint is not None:
        check_resumed_model(model_dir, checkpoint, "worker.actor.model_path")
    processor = VLProcessor.from_pretrained(
        model_dir, min_pixels=recipe.data.min_pixels, max_pixels=recipe.data.max_pixels
    )
    builder = PromptBuilder(processor, recipe.data)
    scorer = OutcomeScorer(recipe.reward.custom, format_weight=recipe.reward.format_weight)
    want_val = recipe.trainer.val_freq > 0 or recipe.trainer.val_before_train
    loader, val_rows = load_data(recipe.data, recipe.reward.custom, builder, say, validation=want_val)
    total_steps = planned_steps(recipe.trainer, len(loader))
    start_step, optimizer_step = restore_driver_state(checkpoint, loader, recipe.optimizer_steps_per_step)

    rm_service = None
    if recipe.algorithm.trust.enable:
        rm_service = thinking_service(
            recipe.reward.thinking,
            stack,
            training_gpus=recipe.world_size if recipe.trainer.device != "cpu" else 0,
            record_dir=run_dir,
        )
        stack.callback(rm_service.close)
        rm_service.start()

    say("starting Ray workers")
    workers, device = start_workers(recipe, stack, ray_address, model_dir, total_steps, processor, say)
    actor = recipe.worker.actor
    builder.patch_dtype = compute_dtype(device, actor.dtype, actor.master_dtype)  # patches cross Ray in it
    described = workers.describe()
    atomic_write_json(run_dir / "workers.json", described, indent=1)
    peak = peak_flops(str(described[0]["device_name"]), os.environ.get("SOPHIAVL_PEAK_FLOPS"))
    if checkpoint is not None:
        say(f"resuming from {checkpoint}")
        workers.load_checkpoint(checkpoint, start_step, optimizer_step)

    rm_client = rm_service.client() if rm_service is not None else None
    use_ref = uses_reference(recipe)
    ctx = StepContext(
        recipe=recipe,
        workers=workers,
        processor=processor,
        builder=builder,
        scorer=scorer,
        rm=rm_client,
        monitor=FailureMonitor.from_config(recipe.reward.thinking) if rm_client is not None else None,
        total_steps=total_steps,
        use_ref=use_ref,
        dump_dir=run_dir / "rollouts",
        flops=FlopsModel.from_config(_model_config(model_dir)),
        next_rows=loader.next_batch,
    )
    resolved = resolved_values(device, peak, described[0]["device_name"], rm_client, rm_service)
    recipe_yaml = dump_recipe(recipe) + resolved_comment(resolved)
    atomic_write_text(run_dir / "recipe.yaml", recipe_yaml)
    loggers = build_loggers(recipe, run_dir, resume_step=start_step)
    stack.callback(loggers.close)
    ctx.waiting = loggers.note  # "waiting on the reward model (...)" on the progress line
    return Run(
        recipe=recipe,
        run_dir=run_dir,
        model_dir=model_dir,
        ctx=ctx,
        loader=loader,
        val_rows=val_rows,
        loggers=loggers,
        manager=CheckpointManager(checkpoints_dir(run_dir), recipe.trainer.save_limit),
        total_steps=total_steps,
        start_step=start_step,
        peak_flops=peak,
        recipe_yaml=recipe_yaml,
        say=say,
    )


def planned_steps(trainer: TrainerConfig, batches_per_epoch: int) -> int:
    """Steps of the whole run: every epoch's batches, cut at `trainer.max_steps`."""
    total = batches_per_epoch * trainer.total_epochs
    return total if trainer.max_steps is None else min(total, trainer.max_steps)


def restore_driver_state(
    checkpoint: Path | None, loader: Any, optimizer_steps_per_step: int
) -> tuple[int, int]:
    """(step, optimizer step) to continue from, with the loader moved to where the checkpoint left it."""
    if checkpoint is None:
        return 0, 0
    state = CheckpointManager.load_driver_state(checkpoint)
    start_step = int(state["step"])
    loader.load_state_dict(state["loader"])
    return start_step, int(state.get("optimizer_step", start_step * optimizer_steps_per_step))


def start_workers(
    recipe: Recipe,
    stack: ExitStack,
    ray_address: str | None,
    model_dir: Path,
    total_steps: int,
    processor: Any,
    say: Any,
) -> tuple[Workers, str]:
    """Ray, one worker per rank, each set up with the policy (and reference, rollout engine)."""
    quiet.install(ray_logs=True)
    started = cluster.connect(ray_address)
    take_back()  # ray.init took SIGTERM for itself (a silent exit 15): the run's flag handles it again
    stack.callback(cluster.disconnect, started)
    device = resolve_device(recipe.trainer.device)
    for note in ignored_options(recipe, device, model_dir):
        say(note)
    if kernels := linear_attention_kernel_note(_model_config(model_dir), device):
        say(kernels)
    from sophiavl_cli.engine.rollout.vllm import worker_env

    workers = Workers(cluster.WorkerGroup(recipe.world_size, device, env=worker_env(recipe.worker.rollout)))
    stack.callback(workers.shutdown)
    workers.setup(_worker_spec(recipe, model_dir, workers, device, total_steps, processor))
    return workers, device


def fit(run: Run, stack: ExitStack, stop: StopFlag | None = None) -> RunResult:
    """The training loop (`engine/loop.py`) over `run_step`, validation and `save_checkpoint`, then
    the curves. `stop`: the Ctrl-C / SIGTERM flag; without one, a fresh flag is entered on `stack`."""
    from sophiavl_cli.engine.observe.curves import plot_curves

    recipe = run.recipe
    if stop is None:
        stop = stack.enter_context(StopFlag(recipe.trainer.stop_grace_s))
    timer = StepTimer()  # the step's phases

    zero_advantages = ZeroAdvantageWatch()

    def one_step(step: int) -> dict[str, float]:
        timer.reset()
        metrics = run_step(run.ctx, run.loader.next_batch(), step, timer)
        metrics |= timer.metrics()
        metrics |= throughput_metrics(metrics, recipe.world_size, run.peak_flops)
        metrics[TRAIN_EPOCH] = float(run.loader.epoch)
        if (notice := zero_advantages.update(step, metrics.get(ADV_ZERO_FRACTION))) is not None:
            run.say(notice)
        return metrics

    def validation(step: int) -> dict[str, float]:
        metrics, samples = validate(run.ctx, run.val_rows, step)
        run.loggers.log_generations(step, samples)
        return metrics

    loop = Loop(
        trainer=recipe.trainer,
        loggers=run.loggers,
        run_dir=run.run_dir,
        start_step=run.start_step,
        total_steps=run.total_steps,
        step=one_step,
        save=lambda step: save_checkpoint(run, step),
        validate=validation if run.val_rows else None,
    )
    result = run_steps(loop, stop, stack)
    metrics_file = run.run_dir / "metrics.jsonl"
    if metrics_file.is_file():
        plot_curves(metrics_file, run.run_dir / "curves")
    return result


def save_checkpoint(run: Run, step: int) -> Path:
    """Every rank's shards, then the driver state (data position, counters) and the HF copy."""
    save_start = time.perf_counter()
    tmp = run.manager.begin(step)
    run.ctx.workers.save_checkpoint(tmp)
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


def resolved_values(
    device: str, peak: float | None, device_name: object, rm_client: Any, rm_service: Any
) -> dict[str, Any]:
    """What the run resolved from defaults and the environment; never a secret (no API key)."""
    values: dict[str, Any] = {"device": device, "device_name": str(device_name), "peak_flops": peak}
    if rm_client is not None:
        values["reward_endpoint"] = _without_credentials(rm_client.base_url)
        values["reward_model"] = rm_client.model
        values["reward_server"] = "built-in" if rm_service.embedded else "external"
    return values


def resolved_comment(values: dict[str, Any]) -> str:
    """`values` as a YAML comment block: a record for people and tools, not recipe keys to load."""
    text = yaml.safe_dump({"resolved": values}, sort_keys=False)
    return "# Resolved by this run at start (not recipe keys):\n" + "".join(
        f"# {line}\n" for line in text.splitlines()
    )


def _without_credentials(url: str) -> str:
    """The URL without user:password@ or a query string (where tokens sometimes ride)."""
    parts = urlsplit(url)
    host = f"[{parts.hostname}]" if ":" in (parts.hostname or "") else parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def load_data(
    data: DataConfig, custom: dict[str, str], builder: PromptBuilder, say: Any, *, validation: bool
) -> tuple[Any, list[dict[str, Any]]]:
    """The training loader (rows over data.max_prompt_length dropped) and the validation rows."""
    from sophiavl_cli.data.loader import PromptDataLoader, load_rows

    registry = Path(data.registry) if data.registry else None
    train_rows = load_rows(data.train_files, registry=registry, extra_types=custom)
    kept, dropped = builder.keep_fitting(train_rows)
    if dropped:
        say(f"dropped {dropped} training rows longer than data.max_prompt_length={data.max_prompt_length}")
        train_rows = train_rows.select(kept)
    val_rows: list[dict[str, Any]] = []
    if data.val_files and validation:
        val_rows = list(load_rows(data.val_files, registry=registry, extra_types=custom))
    loader = PromptDataLoader(
        train_rows, batch_size=data.rollout_batch_size, shuffle=data.shuffle, seed=data.seed
    )
    return loader, val_rows


def ignored_options(recipe: Recipe, device: str, model_dir: Path | None = None) -> list[str]:
    """One line per recipe option this run cannot honour (said once, at start); see engine.honoured."""
    from sophiavl_cli.engine.lifecycle.honoured import RunFacts, unhonoured_keys

    config = _model_config(model_dir) if model_dir is not None else None
    return unhonoured_keys(recipe, RunFacts.detect(device, config))


def _model_config(model_dir: Path) -> object:
    """The policy's transformers config (for its FLOPs per token)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_dir))


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import ray

    return "cuda" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def _worker_spec(
    recipe: Recipe, model_dir: Path, workers: Workers, device: str, total_steps: int, processor: Any
) -> WorkerSpec:
    from sophiavl_cli.generation.tokens import pad_token_id, stop_token_ids

    host, port = workers.rendezvous_address()
    eos = stop_token_ids(model_dir, processor.tokenizer)
    pad = pad_token_id(processor.tokenizer, eos)
    return WorkerSpec(
        recipe=recipe,
        model_dir=str(model_dir),
        master_addr=host,
        master_port=port,
        device=device,
        optimizer_steps_total=max(total_steps * recipe.optimizer_steps_per_step, 1),
        need_ref=uses_reference(recipe),
        eos_token_ids=eos,
        pad_token_id=int(pad),
        collective_timeout_s=recipe.trainer.collective_timeout,
    )
