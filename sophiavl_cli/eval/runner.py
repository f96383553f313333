"""`sophiavl eval` end to end: data -> prompts -> generation (resumable) -> scores -> reports.

Per benchmark, under `<output_dir>/<Benchmark>/`:
- `predictions.jsonl`: one line per generated response, appended as it arrives and keyed by
  sha256(benchmark, index, model, prompt preset, generation settings). A rerun with the same
  settings reuses every line it finds and generates only the rest, so an interrupted run resumes;
  changing the model, preset, pixel bounds or max tokens gives new keys, never stale answers.
  The backend is not part of the key: greedy hf and vLLM runs are meant to be interchangeable.
- `judge_cache.jsonl` (with `--judge`): the judge's replies, keyed the same way.
- `scores.json`, `scores.csv`: headline, totals and breakdowns (`report.py`).

Prompts: `default` is the benchmark's VLMEvalKit prompt (images first, or at `<image N>`
markers for MMMU), with Qwen's default system message; `sophiavl-r1` is the released training
prompt (system prompt + thinking instruction + type suffix) around the same question text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sophiavl_cli.data.prompts import SYSTEM_PROMPT, sophiavl_user_text
from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks.base import Benchmark, Sample
from sophiavl_cli.eval.cache import PREDICTIONS_FILE, prediction_key, read_cache
from sophiavl_cli.eval.data import load_samples, open_image, resolve_data
from sophiavl_cli.eval.generation import BACKENDS, HFGenerator, Request, VLLMGenerator
from sophiavl_cli.eval.judge import Judge, JudgeSettings
from sophiavl_cli.eval.matching import answer_text
from sophiavl_cli.eval.report import EvalResult, make_result, write_result
from sophiavl_cli.eval.scoring import score_items, scoring_label
from sophiavl_cli.eval.settings import PROMPTS, EvalSettings
from sophiavl_cli.eval.sharding import SHARD_GLOB, ShardPool, default_shards, merge, plan
from sophiavl_cli.fileio import JsonlAppender

JUDGE_CACHE_FILE = "judge_cache.jsonl"
_IMAGE_MARKER = re.compile(r"<image\s*(\d+)>")

Progress = Callable[[str, int, int], None]  # (benchmark, done, total)


# ---------------------------------------------------------------------- prompts


def user_content(text: str, num_images: int) -> tuple[list[dict[str, Any]], list[int]]:
    """(content parts, image order): images at `<image N>` markers when they name every image once
    or more and nothing else, else all images first (VLMEvalKit's default)."""
    pieces = _IMAGE_MARKER.split(text)
    numbers = [int(n) for n in pieces[1::2]]
    if num_images and numbers and set(numbers) == set(range(1, num_images + 1)):
        content: list[dict[str, Any]] = []
        order: list[int] = []
        for position, piece in enumerate(pieces):
            if position % 2:
                content.append({"type": "image"})
                order.append(int(piece) - 1)
            elif piece:
                content.append({"type": "text", "text": piece})
        return content, order
    return [{"type": "image"} for _ in range(num_images)] + [{"type": "text", "text": text}], list(
        range(num_images)
    )


def build_messages(bench: Benchmark, sample: Sample, preset: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Chat messages for one sample and the order its images fill the image slots."""
    text = bench.prompt_text(sample)
    if preset == "default":
        content, order = user_content(text, len(sample.images))
        return [{"role": "user", "content": content}], order
    if preset == "sophiavl-r1":
        user = sophiavl_user_text(text, None, bench.sample_problem_type(sample))
        content = [{"type": "image"} for _ in sample.images] + [{"type": "text", "text": user}]
        system = {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}
        return [system, {"role": "user", "content": content}], list(range(len(sample.images)))
    raise UserError(f"--prompt: unknown preset {preset!r}; choose one of {', '.join(PROMPTS)}")


# ---------------------------------------------------------------------- the run


def run_eval(settings: EvalSettings, progress: Progress | None = None) -> list[EvalResult]:
    """Generate what is missing, score every benchmark, write the reports; one result per benchmark."""
    if settings.backend not in BACKENDS:
        raise UserError(
            f"--backend: unknown backend {settings.backend!r}; choose one of {', '.join(BACKENDS)}"
        )
    if settings.prompt not in PROMPTS:
        raise UserError(f"--prompt: unknown preset {settings.prompt!r}; choose one of {', '.join(PROMPTS)}")
    from sophiavl_cli.models.resolve import resolve_model

    model_path = resolve_model(settings.model)
    # all data is loaded (and checked) before the model is
    loaded = [(b, _samples_for(b, settings)) for b in settings.benchmarks]
    max_images = max((len(s.images) for _, samples in loaded for s in samples), default=1)
    num_shards = settings.shards or default_shards(settings.backend, settings.tensor_parallel)
    generator: Generator | None = None
    pool: ShardPool | None = None
    results: list[EvalResult] = []
    try:
        for bench, samples in loaded:
            folder = settings.output_dir / bench.name
            responses = _cached_responses(bench, samples, settings, str(model_path), folder)
            missing = [s for s in samples if s.index not in responses]
            if missing and num_shards > 1:
                pool = pool or ShardPool(
                    settings, model_path, max_images, num_shards, _generator, generate_file
                )
                _generate_sharded(bench, samples, missing, settings, pool, folder, responses, progress)
                responses = _cached_responses(bench, samples, settings, str(model_path), folder)
            elif missing:
                generator = generator or _generator(settings, model_path, max_images)
                _generate(
                    bench,
                    missing,
                    settings,
                    str(model_path),
                    generator,
                    folder,
                    responses,
                    progress,
                    len(samples),
                )
            keys = {s.index: _key(bench, s, settings, str(model_path)) for s in samples}
            merge(folder, PREDICTIONS_FILE, samples, keys)  # shards of this or an interrupted run
            results.append(_score(bench, samples, responses, settings, folder))
    finally:
        if pool is not None:
            pool.close()
    return results


def _key(bench: Benchmark, sample: Sample, settings: EvalSettings, model_id: str) -> str:
    return prediction_key(bench.name, sample.index, model_id, settings.prompt, settings.generation_settings())


def _generate_sharded(
    bench: Benchmark,
    samples: Sequence[Sample],
    missing: Sequence[Sample],
    settings: EvalSettings,
    pool: ShardPool,
    folder: Path,
    responses: dict[str, str],
    progress: Progress | None,
) -> None:
    shards = plan(samples, {s.index for s in missing}, pool.num_shards)
    done_before = len(responses)

    def report(done: int) -> None:
        if progress is not None:
            progress(bench.name, min(len(samples), done_before + done), len(samples))

    pool.run(bench, shards, folder, report)


Generator = HFGenerator | VLLMGenerator


def _generator(settings: EvalSettings, model_path: Path, max_images: int) -> Generator:
    from sophiavl_cli.models.processing import VLProcessor

    processor = VLProcessor.from_pretrained(
        model_path, min_pixels=settings.min_pixels, max_pixels=settings.max_pixels
    )
    if settings.backend == "vllm":
        options = dict(settings.vllm_options or {})
        if settings.tensor_parallel > 1:
            options.setdefault("tensor_parallel_size", settings.tensor_parallel)
        return VLLMGenerator(
            model_path,
            processor,
            max_images=max_images,
            max_model_len=settings.max_model_len,
            engine_options=options,
        )
    return HFGenerator(model_path, processor)


def _samples_for(bench: Benchmark, settings: EvalSettings) -> list[Sample]:
    data = resolve_data(settings.data)
    if data is not None and len(settings.benchmarks) > 1 and data.is_dir():
        for candidate in (data / f"{bench.tsv_name}.tsv", data / bench.name, data / bench.tsv_name):
            if candidate.exists():
                data = candidate
                break
    return load_samples(bench, data, settings.split, settings.limit)


def _cached_responses(
    bench: Benchmark, samples: Sequence[Sample], settings: EvalSettings, model_id: str, folder: Path
) -> dict[str, str]:
    cache = read_cache(folder / PREDICTIONS_FILE)
    for shard in sorted(folder.glob(SHARD_GLOB)):  # answers of shards not merged yet (interrupted run)
        cache.update(read_cache(shard))
    gen = settings.generation_settings()
    responses: dict[str, str] = {}
    for sample in samples:
        record = cache.get(prediction_key(bench.name, sample.index, model_id, settings.prompt, gen))
        if record is not None:
            responses[sample.index] = str(record["prediction"])
    return responses


def generate_file(
    bench: Benchmark,
    samples: list[Sample],
    settings: EvalSettings,
    model_id: str,
    generator: Generator,
    path: Path,
) -> int:
    """Answer `samples` into the cache file `path` (an eval shard's job); how many were answered."""
    responses: dict[str, str] = {}
    _generate(
        bench,
        samples,
        settings,
        model_id,
        generator,
        path.parent,
        responses,
        None,
        len(samples),
        file_name=path.name,
    )
    return len(responses)


def _generate(
    bench: Benchmark,
    missing: Sequence[Sample],
    settings: EvalSettings,
    model_id: str,
    generator: Generator,
    folder: Path,
    responses: dict[str, str],
    progress: Progress | None,
    total: int,
    *,
    file_name: str = PREDICTIONS_FILE,
) -> None:
    gen = settings.generation_settings()
    processor = generator.processor
    by_key = {prediction_key(bench.name, s.index, model_id, settings.prompt, gen): s for s in missing}

    def requests() -> Iterator[Request]:
        for key, sample in by_key.items():
            messages, order = build_messages(bench, sample, settings.prompt)
            images = tuple(open_image(sample.images[i], sample.origin) for i in order)
            yield Request(key, processor.apply_chat_template(messages), images)

    writer = JsonlAppender(folder / file_name)

    def on_result(key: str, text: str) -> None:
        sample = by_key[key]
        responses[sample.index] = text
        writer.write(
            {
                "key": key,
                "benchmark": bench.name,
                "index": sample.index,
                "model": model_id,
                "prompt": settings.prompt,
                "settings": gen,
                "prediction": text,
                "answer": answer_text(text),
            }
        )
        if progress is not None:
            progress(bench.name, len(responses), total)

    try:
        generator.generate(requests(), max_new_tokens=settings.max_new_tokens, on_result=on_result)
    finally:
        writer.close()


def _score(
    bench: Benchmark,
    samples: Sequence[Sample],
    responses: dict[str, str],
    settings: EvalSettings,
    folder: Path,
    *,
    duplicates: int = 0,
) -> EvalResult:
    bench = bench.configured(lenient=settings.lenient)
    judge = Judge(settings.judge, folder / JUDGE_CACHE_FILE) if settings.judge and bench.uses_judge else None
    try:
        items = score_items(bench, samples, responses, judge)
    finally:
        if judge is not None:
            judge.close()
    scored = [s for s in samples if s.index in responses]
    result = make_result(
        bench.aggregate(scored, items),
        items,
        scoring=scoring_label(bench, judge),
        model=settings.model,
        prompt=settings.prompt,
        split=settings.split or bench.default_split,
        num_samples=len(samples),
        answered=len(scored),
        duplicates=duplicates,
        lenient=settings.lenient,
    )
    write_result(result, folder)
    return result


def score_predictions(
    bench: Benchmark,
    predictions_path: Path,
    *,
    data: Path | None = None,
    split: str | None = None,
    judge: JudgeSettings | None = None,
    output_dir: Path | None = None,
    allow_partial: bool = False,
    lenient: bool = False,
    warn: Callable[[str], None] | None = None,
) -> EvalResult:
    """Score an existing predictions file (no model); reports go to `output_dir/<Benchmark>/`.

    Items of the data without a prediction stop the run (a score over part of a benchmark is not
    comparable) unless `allow_partial`; then the coverage is reported beside the score. Duplicate
    indexes are reported through `warn`.
    """
    from sophiavl_cli.eval.predictions import coverage_problem, data_pool, pair_with_samples, read_predictions

    bench = bench.configured(lenient=lenient)
    predictions = read_predictions(predictions_path, bench)
    samples = None
    if predictions.samples is None:
        samples = load_samples(bench, data, split)
    pool = data_pool(bench, predictions, samples)
    paired = pair_with_samples(bench, predictions, pool)
    problem = coverage_problem(bench, predictions, pool)
    if len(paired) < len(pool) and not allow_partial:
        raise UserError(
            f"{problem}; pass --allow-partial to score what is there (coverage is shown beside it)"
        )
    if problem and warn is not None:
        warn(problem)
    folder = (output_dir or predictions_path.parent) / bench.name
    settings = EvalSettings(
        model=predictions_path.name,
        benchmarks=(bench,),
        output_dir=folder.parent,
        split=split,
        prompt="(from predictions file)",
        judge=judge,
        lenient=lenient,
    )
    return _score(
        bench, pool, predictions.responses, settings, folder, duplicates=len(predictions.duplicates)
    )
