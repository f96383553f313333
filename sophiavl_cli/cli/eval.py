"""`sophiavl eval`: run a model on benchmarks and score it, or score existing predictions.

Usage:
    sophiavl eval --bench MathVista
    sophiavl eval --model ./ckpt/hf --bench MathVista,MMMU,MMStar --backend vllm --output-dir runs/eval
    sophiavl eval --bench MMMU --data ~/LMUData/MMMU_DEV_VAL.tsv --prompt sophiavl-r1 --limit 50
    sophiavl eval --bench MathVista --judge gpt-4o-mini --judge-url https://api.openai.com/v1
    sophiavl eval --bench MME --predictions Qwen2.5-VL-7B_MME.xlsx
"""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from sophiavl_cli.cli.options import Backend, JsonOutput, ModelRef
from sophiavl_cli.console import console, err_console, print_json
from sophiavl_cli.errors import UserError
from sophiavl_cli.eval.benchmarks import parse_bench_list
from sophiavl_cli.eval.judge import DEFAULT_URL, JudgeSettings
from sophiavl_cli.eval.report import EvalResult, summary_table
from sophiavl_cli.eval.runner import run_eval, score_predictions
from sophiavl_cli.eval.settings import MAX_PIXELS, MIN_PIXELS, EvalSettings
from sophiavl_cli.hub.names import DEFAULT_MODEL
from sophiavl_cli.models.resolve import BUILTIN_PREFIX

BUILTIN_MAX_NEW_TOKENS = 32
BUILTIN_MIN_PIXELS = 4 * 28 * 28
BUILTIN_MAX_PIXELS = 64 * 28 * 28

EPILOG = (
    "Examples:\n\n"
    "  sophiavl eval --bench MathVista --model builtin:tiny-qwen2.5-vl --data builtin\n\n"
    "  sophiavl eval --bench MathVista\n\n"
    "  sophiavl eval --model builtin:tiny-qwen2.5-vl --bench ChartQA --data ChartQA_TEST.tsv --limit 8\n\n"
    "  sophiavl eval --bench MathVista,MMMU --backend vllm --judge gpt-4o-mini\n\n"
    "  sophiavl eval --bench MME --predictions model_MME.xlsx"
)


def eval_command(
    bench: str = typer.Option(
        ...,
        "--bench",
        help="Benchmarks, comma-separated: MathVista, MathVerse, "
        "MathVision, MMMU, MMStar, MMBench, ChartQA, OCRBench, MME.",
    ),
    model: ModelRef = DEFAULT_MODEL,
    predictions: Path | None = typer.Option(
        None,
        "--predictions",
        help="Score this file (.jsonl, or VLMEvalKit .xlsx/.tsv) instead of generating.",
    ),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Benchmark data: VLMEvalKit .tsv, HF parquet file, a folder of either, or `builtin` "
        "(a few sample rows of every benchmark, to try the command).",
    ),
    split: str | None = typer.Option(
        None, "--split", help="Split (default: the benchmark's, e.g. testmini)."
    ),
    backend: Backend = "hf",
    shards: int | None = typer.Option(
        None,
        "--shards",
        min=1,
        help="Generation processes, one Ray actor each (default: one per GPU group with vllm, else 1).",
    ),
    tensor_parallel: int = typer.Option(1, "--tensor-parallel", min=1, help="GPUs per vLLM engine."),
    prompt: str = typer.Option("default", "--prompt", help="default (VLMEvalKit's) or sophiavl-r1."),
    judge: str = typer.Option(
        "none", "--judge", help="Judge model for MathVista/MathVerse/MathVision, or none."
    ),
    judge_url: str | None = typer.Option(
        None, "--judge-url", help="OpenAI-compatible base URL (default $OPENAI_API_URL or OpenAI's)."
    ),
    judge_concurrency: int = typer.Option(8, "--judge-concurrency", min=1, help="Judge requests in flight."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Only the first N samples per benchmark."),
    output_dir: Path = typer.Option(
        Path("eval_results"), "--output-dir", help="Where predictions and scores go."
    ),
    max_new_tokens: int | None = typer.Option(
        None,
        "--max-new-tokens",
        min=1,
        help="Generation budget per answer (default 2048; 32 for builtin: models).",
    ),
    min_pixels: int | None = typer.Option(
        None, "--min-pixels", help=f"Images below this are upscaled (default {MIN_PIXELS}, the paper's)."
    ),
    max_pixels: int | None = typer.Option(
        None, "--max-pixels", help=f"Images above this are downscaled (default {MAX_PIXELS}, the paper's)."
    ),
    lenient: bool = typer.Option(
        False,
        "--lenient",
        help="Score with our documented departures from the official rules (docs/eval.md).",
    ),
    allow_partial: bool = typer.Option(
        False,
        "--allow-partial",
        help="With --predictions: score even when items have no prediction (coverage is shown beside the score).",
    ),
    as_json: JsonOutput = False,
) -> None:
    """Evaluate a model on benchmarks with the official scoring (or score existing predictions)."""
    benches = parse_bench_list(bench)
    judge_settings = _judge_settings(judge, judge_url, judge_concurrency)
    if predictions is not None:
        if len(benches) != 1:
            raise UserError("--predictions scores one benchmark at a time; pass a single --bench")
        results = [
            score_predictions(
                benches[0],
                predictions,
                data=data,
                split=split,
                judge=judge_settings,
                output_dir=output_dir,
                allow_partial=allow_partial,
                lenient=lenient,
                warn=lambda line: err_console.print(f"[yellow]warning:[/] {escape(line)}", soft_wrap=True),
            )
        ]
    else:
        max_new_tokens, min_pixels, max_pixels = _budget(model, max_new_tokens, min_pixels, max_pixels)
        settings = EvalSettings(
            model=model,
            benchmarks=tuple(benches),
            output_dir=output_dir,
            data=data,
            split=split,
            backend=backend,
            prompt=prompt,
            max_new_tokens=max_new_tokens,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            limit=limit,
            judge=judge_settings,
            lenient=lenient,
            shards=shards,
            tensor_parallel=tensor_parallel,
        )
        if backend == "vllm":
            _vllm_preflight(tensor_parallel)
        results = _run_with_progress(settings, quiet=as_json)
    _show(results, output_dir, as_json)


def _vllm_preflight(tensor_parallel: int) -> None:
    """`--backend vllm`'s start-up problems, all at once, before any data or model loads."""
    from sophiavl_cli.engine.lifecycle import machine_checks as machine
    from sophiavl_cli.engine.lifecycle.preflight import raise_problems, run_check

    device = "cuda" if machine.gpu_driver_loaded() else "cpu"

    def gpus() -> None:
        have = machine.local_gpu_count()
        if device == "cuda" and have < tensor_parallel:
            raise UserError(
                f"--tensor-parallel {tensor_parallel} needs {tensor_parallel} GPUs; this machine has {have}"
            )

    checks = [
        ("vLLM", lambda: machine.check_vllm("--backend vllm")),
        ("CUDA driver", lambda: machine.check_cuda_driver(device)),
        ("GPUs", gpus),
    ]
    raise_problems([run_check(name, check) for name, check in checks], what="eval")


def _budget(
    model: str, max_new_tokens: int | None, min_pixels: int | None, max_pixels: int | None
) -> tuple[int, int, int]:
    """Generation budget: the paper's, or a small one for the random-weight builtin: test models.

    A builtin model never stops on its own and would spend 2048 tokens on ~1000 vision tokens per
    image; with it the point is to try the command, so it answers in seconds. Flags given win.
    """
    if model.startswith(BUILTIN_PREFIX):
        small = (BUILTIN_MAX_NEW_TOKENS, BUILTIN_MIN_PIXELS, BUILTIN_MAX_PIXELS)
    else:
        small = (2048, MIN_PIXELS, MAX_PIXELS)
    return (
        max_new_tokens if max_new_tokens is not None else small[0],
        min_pixels if min_pixels is not None else small[1],
        max_pixels if max_pixels is not None else small[2],
    )


def _judge_settings(judge: str, judge_url: str | None, concurrency: int) -> JudgeSettings | None:
    if judge.strip().lower() in ("", "none"):
        if judge_url:
            raise UserError("--judge-url needs --judge MODEL (the judge model name)")
        return None
    url = judge_url or os.environ.get("OPENAI_API_URL") or os.environ.get("OPENAI_BASE_URL") or DEFAULT_URL
    return JudgeSettings(model=judge.strip(), base_url=url, concurrency=concurrency)


def _run_with_progress(settings: EvalSettings, quiet: bool) -> list[EvalResult]:
    if quiet:
        return run_eval(settings)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[str, int] = {}

        def update(name: str, done: int, total: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(f"generating {name}", total=total)
            bar.update(tasks[name], completed=done)

        return run_eval(settings, progress=update)


def _show(results: list[EvalResult], output_dir: Path, as_json: bool) -> None:
    if as_json:
        print_json({"results": [r.to_json() for r in results]})
        return
    console.print(summary_table(results))
    for result in results:
        if result.partial:
            console.print(
                f"[yellow]{result.score.benchmark}: {result.answered} of {result.num_samples} items scored "
                f"({result.coverage:.0f}% coverage, --allow-partial); not comparable to a full run[/]"
            )
        if result.scoring == "rule-based":
            console.print(
                f"[yellow]{result.score.benchmark}: rule-based score (the official scorer uses an LLM judge; "
                "pass --judge MODEL for the comparable number)[/]"
            )
    console.print(f"predictions and scores under {output_dir}/<Benchmark>/")
