"""`sophiavl eval-rm MODEL --data NAME` and `sophiavl dataset check-rm SPEC`: reward-model quality and data.

Usage:
    sophiavl eval-rm runs/sophiavl/thinking_rm_quickstart/merged --data builtin:thinking-demo@val
    sophiavl eval-rm http://127.0.0.1:8000/v1 --data thinking156k@test --served-name thinking-reward-model
    sophiavl dataset check-rm thinking156k
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from sophiavl_cli.console import console, fail, stat
from sophiavl_cli.rewards.rm_quality import NUM_BINS, RMQuality

EPILOG = (
    "Examples: sophiavl eval-rm ./merged-rm --data builtin:thinking-demo@val | sophiavl eval-rm "
    "http://127.0.0.1:8000/v1 --data thinking156k@test --served-name thinking-reward-model"
)


def eval_rm(
    model: str = typer.Argument(
        ..., help="An OpenAI-compatible URL (http://host:port/v1) or a model reference."
    ),
    data: str = typer.Option(
        ..., "--data", help="Labelled rows in the Thinking-156k layout (registry name@split, file)."
    ),
    output: Path = typer.Option(None, "--output", "-o", help="Report folder (default rm-eval/<model name>)."),
    limit: int = typer.Option(None, "--limit", min=1, help="Score only the first N rows."),
    registry: Path = typer.Option(None, "--registry", help="dataset_info.json to resolve names from."),
    served_name: str = typer.Option(
        None,
        "--served-name",
        help="Model name at the endpoint (default $REWARD_MODEL or thinking-reward-model).",
    ),
    backend: str = typer.Option("hf", "--backend", help="Serving a model reference: hf (CPU/dev) or vllm."),
    concurrency: int = typer.Option(16, "--concurrency", min=1, help="Requests in flight at once."),
) -> None:
    """Score labelled rows with a served or local thinking reward model: MAE, within 0.1, Spearman.

    Exit 1 when no row was scored: a report of nothing is a failed evaluation, not a result.
    """
    from sophiavl_cli.errors import UserError
    from sophiavl_cli.eval.reward_model import evaluate_reward_model, is_endpoint

    if backend not in ("hf", "vllm"):
        raise UserError(f"--backend {backend!r}: choose hf or vllm")
    name = "endpoint" if is_endpoint(model) else (Path(model).name or model).replace(":", "-")
    result = evaluate_reward_model(
        model,
        data,
        out_dir=output or Path("rm-eval") / name,
        registry=registry,
        limit=limit,
        served_name=served_name,
        backend=backend,  # type: ignore[arg-type]
        concurrency=concurrency,
        status=lambda text: console.print(f"[dim]{text}[/]"),
    )
    render_quality(result.quality, title=f"{model} on {data}")
    if result.failures:
        console.print("failed calls: " + ", ".join(f"{k}: {v}" for k, v in sorted(result.failures.items())))
    console.print(f"report: [bold]{result.written[0].parent}[/]", soft_wrap=True)
    if result.quality.scored == 0:
        kinds = ", ".join(f"{k}: {v}" for k, v in sorted(result.failures.items())) or "no reply"
        fail(
            f"no row was scored ({result.quality.failures} of {result.quality.rows} calls failed: {kinds}); "
            f"check that {model} is a thinking reward model answering <answer>score</answer>"
        )
        raise typer.Exit(1)


def render_quality(quality: RMQuality, *, title: str) -> None:
    summary = Table(title=title)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    for key, value in (
        ("rows (scored / failed)", f"{quality.scored} / {quality.failures}"),
        ("mean absolute error", stat(quality.mae, ".4f")),
        ("within 0.1", stat(quality.within, ".3f")),
        ("Spearman", stat(quality.spearman, ".4f")),
    ):
        summary.add_row(key, value)
    console.print(summary)
    confusion = Table(title="confusion: rows = label bin, columns = predicted bin")
    confusion.add_column("label")
    for b in range(NUM_BINS):
        confusion.add_column(f"{b / 10:.1f}", justify="right")
    for b, row in enumerate(quality.confusion):
        confusion.add_row(f"{b / 10:.1f}", *(str(n) if n else "." for n in row))
    console.print(confusion)


def check_rm(
    spec: str = typer.Argument(
        ..., help="Datasets in the Thinking-156k layout (name@split, files, builtin:thinking-demo)."
    ),
    registry: Path = typer.Option(None, "--registry", help="dataset_info.json to resolve names from."),
) -> None:
    """Pre-flight check of reward-model data: images shared by unusually many rows, score histogram."""
    from sophiavl_cli.data.rm_check import check_rm_rows
    from sophiavl_cli.data.rm_rows import load_rm_rows

    report = check_rm_rows(load_rm_rows(spec, registry=registry))
    table = Table(title="score histogram per 0.1 bin")
    table.add_column("score")
    table.add_column("rows", justify="right")
    table.add_column("share", justify="right")
    for b, count in enumerate(report.histogram):
        table.add_row(f"{b / 10:.1f}", str(count), f"{count / max(report.rows, 1):.1%}")
    console.print(table)
    console.print(
        f"{spec}: {report.rows} rows; {report.without_image} rows without an image; {report.off_grid} labels off the 0.1 grid; images used by "
        f"more than {report.threshold} rows: {len(report.shared)}"
    )
    for line in report.warnings():
        console.print(f"[yellow]warning:[/] {line}", soft_wrap=True)
    if report.shared:
        raise typer.Exit(1)
