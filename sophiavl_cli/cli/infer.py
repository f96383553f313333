"""`sophiavl infer`: answer one question about images, or a JSON-lines file of them.

Usage:
    sophiavl infer --image problem.png --type numerical          # the question is the picture itself
    sophiavl infer --image chart.png --type numerical --prompt "What is the highest bar?"
    sophiavl infer --model builtin:tiny-qwen2.5-vl --image x.png --type "multiple choice" \
        --prompt "Which is larger?" --options "A. 3;B. 5" --json
    sophiavl infer --input requests.jsonl --output answers.jsonl --backend vllm
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from sophiavl_cli.cli.options import Backend, JsonOutput, MaxNewTokens, MaxPixels, MinPixels, ModelRef, Preset
from sophiavl_cli.console import console, print_json
from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.names import DEFAULT_MODEL
from sophiavl_cli.infer.inferencer import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MIN_PIXELS,
    GenerationSettings,
    Inferencer,
    InferRequest,
    InferResult,
)

if TYPE_CHECKING:
    from sophiavl_cli.infer.batch import BatchPlan

# The question when only a picture is given: a photo or screenshot of a problem is the most common
# input. It takes the place of {Question} in the released prompt template (docs/method.md), so the
# model still gets the system prompt, the thinking instruction and the per-type answer suffix.
IMAGE_QUESTION = "Solve the problem shown in the image."

EPILOG = (
    "Without --prompt, the image is the question (the prompt asks to solve the problem it shows). "
    "Question types: numerical, 'multiple choice' (or multiple_choice), free-form, OCR, text. "
    "Without --model, SophiaVL-R1-7B is taken from the local HF cache (`sophiavl download` fetches it). "
    'Batch rows: {"id": ..., "images": [...], "prompt": ..., "type": ..., "options": [...]}.'
)


def infer(
    model: ModelRef = DEFAULT_MODEL,
    image: list[str] = typer.Option(None, "--image", help="Local image file (repeatable, in prompt order)."),
    prompt: str = typer.Option(
        None,
        "--prompt",
        help=f"The question. Without it (with --image) the question is the image itself: {IMAGE_QUESTION!r}.",
    ),
    type_: str = typer.Option(None, "--type", help="numerical | 'multiple choice' | free-form | OCR | text."),
    options: str = typer.Option(None, "--options", help='Multiple-choice options: "A. ..;B. ..".'),
    backend: Backend = "hf",
    max_new_tokens: MaxNewTokens = 2048,
    temperature: float = typer.Option(0.0, "--temperature", help="0 = greedy (the released setting)."),
    preset: Preset = "sophiavl-r1",
    json_out: JsonOutput = False,
    input_: Path = typer.Option(None, "--input", help="Batch mode: JSON-lines requests."),
    output: Path = typer.Option(
        None, "--output", help="Batch mode: JSON-lines answers (appended; resumable)."
    ),
    min_pixels: MinPixels = DEFAULT_MIN_PIXELS,
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    batch_size: int = typer.Option(8, "--batch-size", help="hf backend: prompts per generate call."),
) -> None:
    """Answer a question about images with a SophiaVL-R1-style model (reasoning and answer shown apart)."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, temperature=temperature)
    batch = input_ is not None or output is not None
    if batch:
        if input_ is None or output is None:
            raise UserError("batch mode needs both --input requests.jsonl and --output answers.jsonl")
        if image or prompt or type_ or options:
            raise UserError(
                "--input takes the questions from the file: drop --image/--prompt/--type/--options"
            )
        from sophiavl_cli.infer.batch import plan_batch

        plan = plan_batch(input_, output)  # the whole file, before the model loads
    else:
        if not type_ or not (prompt or image):
            raise UserError(
                "give --type and --image (the question is the image) or --prompt (or both); or --input/--output"
            )
        prompt = prompt or IMAGE_QUESTION
        request = InferRequest.create(prompt=prompt, problem_type=type_, images=image or [], options=options)
    with console.status("loading the model", spinner="dots") if not json_out else nullcontext():
        inferencer = Inferencer(
            model,
            backend=backend,  # type: ignore[arg-type]  # checked by Inferencer
            preset=preset,
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            batch_size=batch_size,
        )
    try:
        if batch:
            _run_batch(inferencer, plan, settings, json_out)
        else:
            _run_single(inferencer, request, settings, json_out)
    finally:
        inferencer.close()


def _run_single(
    inferencer: Inferencer, request: InferRequest, settings: GenerationSettings, json_out: bool
) -> None:
    start = time.perf_counter()
    result = inferencer.generate([request], settings)[0]
    generate_s = time.perf_counter() - start
    timing = {
        "load_s": round(inferencer.load_seconds, 3),
        "generate_s": round(generate_s, 3),
        "tokens_per_s": round(result.completion_tokens / generate_s, 2) if generate_s > 0 else 0.0,
    }
    if json_out:
        print_json(
            {
                "model": inferencer.model_ref,
                "model_path": str(inferencer.model_path),
                "backend": inferencer.backend.name,
                "preset": inferencer.preset,
                **result.to_json(),
                "timing": timing,
            }
        )
        return
    render_result(result, inferencer.model_ref, inferencer.backend.name, timing)


def render_result(result: InferResult, model: str, backend: str, timing: dict[str, float]) -> None:
    """Reasoning and answer in separate panels, then the extracted answer and the costs."""
    if result.reasoning is not None:
        console.print(
            Panel(escape(result.reasoning) or "[dim](empty)[/]", title="reasoning", border_style="cyan")
        )
    console.print(
        Panel(escape(result.answer_text) or "[dim](empty)[/]", title="answer", border_style="green")
    )
    if result.answer is not None:
        console.print(f"[bold]extracted answer:[/] {escape(result.answer)}")
    else:
        console.print("[yellow]no <answer>...</answer> in the response[/] (format check failed)")
    cut = " [yellow](hit --max-new-tokens)[/]" if result.finish_reason == "length" else ""
    console.print(
        f"[dim]{escape(model)} | {backend} | prompt {result.prompt_tokens} tokens "
        f"({result.image_tokens} image) | generated {result.completion_tokens} tokens{cut} in "
        f"{timing['generate_s']:.2f} s ({timing['tokens_per_s']:.1f} tok/s) | load {timing['load_s']:.1f} s[/]"
    )


def _run_batch(inferencer: Inferencer, plan: BatchPlan, settings: GenerationSettings, json_out: bool) -> None:
    from sophiavl_cli.infer.batch import run_batch

    input_, output = plan.input_path, plan.output_path

    with Progress(
        TextColumn("answering"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=json_out,
    ) as progress:
        task = progress.add_task("rows", total=None)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        summary = run_batch(inferencer, plan, None, settings, on_progress=on_progress)
    if json_out:
        print_json(
            {
                "input": str(input_),
                "output": str(output),
                "backend": inferencer.backend.name,
                **summary.to_json(),
            }
        )
        return
    console.print(
        f"[green]{summary.answered} answered[/], {summary.skipped} already in {escape(str(output))} "
        f"({summary.total} rows); {summary.answers_per_s:.2f} answers/s, {summary.tokens_per_s:.1f} tokens/s"
    )
