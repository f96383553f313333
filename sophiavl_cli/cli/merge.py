"""`sophiavl merge`: a training checkpoint -> a Hugging Face model folder.

Usage:
    sophiavl merge                                  # latest checkpoint of the most recent run in runs/
    sophiavl merge runs/sophiavl/trust_grpo/checkpoints/global_step_40 --dtype bf16
    sophiavl merge ckpts/global_step_300 --output SophiaVL-R1-7B-hf   # released EasyR1 layout
    sophiavl merge runs/sophiavl/lora/checkpoints/global_step_40 --base /models/Qwen2.5-VL-7B-Instruct
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.filesize import decimal
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sophiavl_cli.console import console

if TYPE_CHECKING:  # the merge library pulls in torch.distributed.checkpoint (~2 s): import it when merging
    from sophiavl_cli.engine.checkpoint.merge import DtypeChoice


def merge(
    checkpoint: Path = typer.Argument(
        None,
        help="A global_step_N folder (sophiavl DCP or released EasyR1 layout); default: the latest complete "
        "checkpoint of the most recent run under --runs-dir.",
        show_default=False,
    ),
    output: Path = typer.Option(
        None,
        "--output",
        "-o",
        help="Folder to write; default <run>/merged/global_step_N (released layout: <checkpoint>/merged).",
        show_default=False,
    ),
    dtype: str = typer.Option("auto", "--dtype", help="auto (the config's dtype), bf16 or fp32."),
    max_shard_size: str = typer.Option(
        "5GB", "--max-shard-size", help="Largest safetensors file; bigger models get an index."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    force: bool = typer.Option(
        False, "--force", help="Merge a checkpoint without its complete marker (an interrupted save)."
    ),
    runs_dir: Path = typer.Option(
        Path("runs"), "--runs-dir", help="Where to look for runs when CHECKPOINT is omitted."
    ),
    base: Path = typer.Option(
        None,
        "--base",
        help="LoRA runs: the base model folder, when it is no longer at the run's worker.actor.model_path.",
        show_default=False,
    ),
    adapter_only: bool = typer.Option(
        False,
        "--adapter-only",
        help="LoRA runs: write the adapter alone as a peft folder (default: the merged model).",
    ),
) -> None:
    """Merge a sharded checkpoint into safetensors + config, tokenizer, processor and generation config."""
    from sophiavl_cli.engine.checkpoint.merge import find_default_checkpoint, plan_merge, run_merge

    if checkpoint is None:
        checkpoint = find_default_checkpoint(
            runs_dir, say=lambda text: console.print(f"[yellow]{escape(text)}[/]", soft_wrap=True)
        )
        console.print(
            f"merging [bold]{escape(str(checkpoint))}[/] (the newest complete checkpoint of the most recent run)",
            soft_wrap=True,
        )
    if adapter_only:
        from sophiavl_cli.engine.checkpoint.merge import export_adapter

        written = export_adapter(checkpoint, output, overwrite, base)
        console.print(
            f"adapter written to [bold]{escape(str(written))}[/] (load with peft's PeftModel.from_pretrained)"
        )
        return
    plan = plan_merge(checkpoint, output, _dtype(dtype), max_shard_size, overwrite, force, base)
    with Progress(
        TextColumn("[bold]merging"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("merge", total=plan.total_bytes)
        result = run_merge(plan, advance=lambda n: progress.advance(task, n))

    table = Table(title="merged", show_header=False)
    table.add_column("key")
    table.add_column("value")
    for key, value in [
        ("from", f"{plan.checkpoint} ({plan.source.label})"),
        ("to", str(result.output)),
        (
            "tensors",
            f"{result.num_tensors}" + (f" (+{len(plan.dropped)} tied, stored once)" if plan.dropped else ""),
        ),
        ("weights", f"{decimal(result.total_bytes, precision=2)} in {len(plan.shards)} safetensors file(s)"),
        ("dtype", str(result.dtype).removeprefix("torch.")),
        ("other files", ", ".join(f for f in result.files if not f.startswith("model"))),
    ]:
        table.add_row(key, escape(value))
    console.print(table)


def _dtype(text: str) -> DtypeChoice:
    from sophiavl_cli.errors import UserError

    if text not in ("auto", "bf16", "fp32"):
        raise UserError(f"--dtype {text}: use auto, bf16 or fp32")
    return text  # type: ignore[return-value]
