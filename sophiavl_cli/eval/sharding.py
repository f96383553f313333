"""Generation over several engines: one Ray actor per GPU (or tensor-parallel group), one shard each.

A benchmark's samples are dealt by position (`rows[k::n]` goes to shard k), so a shard's share
does not change between runs. Each actor loads the model once and appends its answers to
`predictions.shard-<k>-of-<n>.jsonl` as they come, keyed like the single-process cache; a rerun
reads every shard file first, so an interrupted shard resumes where it stopped. When all shards
are done their lines are merged into `predictions.jsonl` in data order (one atomic rewrite) and
the shard files are removed, so a sharded run leaves exactly what a single-process run leaves.

On a machine without GPUs the same code runs with the hf backend and one CPU per actor (tests run
2 shards this way and compare with a single-process run).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks.base import Benchmark, Sample
from sophiavl_cli.eval.cache import read_cache
from sophiavl_cli.eval.settings import EvalSettings

# (settings, model folder, max images per prompt) -> a generator; (bench, samples, settings,
# model id, generator, shard file) -> answers written. The runner passes its own, so that a shard
# generates exactly as a single process does.
MakeGenerator = Callable[[EvalSettings, Path, int], Any]
GenerateFile = Callable[[Benchmark, list[Sample], EvalSettings, str, Any, Path], int]

SHARD_GLOB = "predictions.shard-*-of-*.jsonl"
POLL_S = 2.0
EVAL_ENV = ("LMUData",)  # VLMEvalKit's data folder, on top of what every worker gets


def shard_file(folder: Path, shard: int, num_shards: int) -> Path:
    """Where shard `shard` of `num_shards` appends its answers."""
    return folder / f"predictions.shard-{shard}-of-{num_shards}.jsonl"


def plan(samples: Sequence[Sample], missing: set[str], num_shards: int) -> list[list[Sample]]:
    """The missing samples of each shard: position `i` of the data goes to shard `i % num_shards`."""
    shards: list[list[Sample]] = [[] for _ in range(num_shards)]
    for position, sample in enumerate(samples):
        if sample.index in missing:
            shards[position % num_shards].append(sample)
    return shards


def default_shards(backend: str, tensor_parallel: int) -> int:
    """vLLM on a GPU node: one engine per `tensor_parallel` visible GPUs; otherwise one process."""
    if backend != "vllm":
        return 1
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return max(1, gpus // max(1, tensor_parallel))


def merge(folder: Path, predictions_file: str, samples: Sequence[Sample], keys: dict[str, str]) -> None:
    """Fold every shard file into the predictions file (data order), then delete the shard files.

    `keys` maps sample index -> prediction key of this run; lines of other runs already in the
    predictions file are kept ahead of the new ones.
    """
    from sophiavl_cli.fileio import atomic_write_jsonl

    shard_paths = sorted(folder.glob(SHARD_GLOB))
    if not shard_paths:
        return
    main = folder / predictions_file
    existing = read_cache(main)
    fresh: dict[str, dict[str, Any]] = {}
    for path in shard_paths:
        fresh.update(read_cache(path))
    records = list(existing.values())
    for sample in samples:
        key = keys.get(sample.index)
        if key is not None and key in fresh and key not in existing:
            records.append(fresh[key])
    atomic_write_jsonl(main, records)
    for path in shard_paths:
        path.unlink()


def _actor_class() -> Any:
    import ray

    @ray.remote
    class ShardWorker:
        """Loads the model once, then generates the shards of every benchmark it is given."""

        def __init__(
            self,
            settings: EvalSettings,
            model_path: str,
            max_images: int,
            env: dict[str, str],
            make_generator: MakeGenerator,
            generate_file: GenerateFile,
        ) -> None:
            os.environ.update(env)
            import torch

            if not torch.cuda.is_available():
                torch.set_num_threads(1)
            self.settings = settings
            self.model_id = model_path
            self.generate_file = generate_file
            self.generator = make_generator(settings, Path(model_path), max_images)

        def generate(self, bench: Benchmark, samples: list[Sample], path: str) -> int:
            return self.generate_file(
                bench, samples, self.settings, self.model_id, self.generator, Path(path)
            )

    return ShardWorker


class ShardPool:
    """`num_shards` `ShardWorker` actors; the Ray it starts (if any) ends with `close`."""

    def __init__(
        self,
        settings: EvalSettings,
        model_path: Path,
        max_images: int,
        num_shards: int,
        make_generator: MakeGenerator,
        generate_file: GenerateFile,
    ) -> None:
        import ray

        from sophiavl_cli.engine.parallel.cluster import connect, forwarded_env

        self.num_shards = num_shards
        self._started = connect(None, num_cpus=None) if not ray.is_initialized() else False
        gpus = max(1, settings.tensor_parallel) if settings.backend == "vllm" and _has_cuda() else 0
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_cpu = 1.0 if cpus >= num_shards else round(cpus / num_shards, 3)
        env = forwarded_env(os.environ) | {name: os.environ[name] for name in EVAL_ENV if name in os.environ}
        worker = _actor_class().options(num_cpus=per_cpu, num_gpus=gpus)
        self.actors = [
            worker.remote(settings, str(model_path), max_images, env, make_generator, generate_file)
            for _ in range(num_shards)
        ]

    def run(
        self,
        bench: Benchmark,
        shards: Sequence[Sequence[Sample]],
        folder: Path,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Generate every shard at once; a failed shard stops the others with a one-line error."""
        import ray

        folder.mkdir(parents=True, exist_ok=True)
        paths = [shard_file(folder, k, self.num_shards) for k in range(self.num_shards)]
        pending = {
            actor.generate.remote(bench, list(samples), str(path)): k
            for k, (actor, samples, path) in enumerate(zip(self.actors, shards, paths, strict=True))
            if samples
        }
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
            for ref in done:
                shard = pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # RayTaskError / RayActorError wrap anything the shard raised
                    self.close()
                    raise UserError(
                        f"eval shard {shard} of {self.num_shards} ({bench.name}) failed: {_first_line(exc)}; "
                        f"rerun to resume (finished answers are kept in {paths[shard]})"
                    ) from exc
            if progress is not None:
                progress(sum(_count_lines(p) for p in paths))

    def close(self) -> None:
        import ray

        from sophiavl_cli.engine.parallel.cluster import disconnect

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started:
            disconnect(True)


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__
