"""`sophiavl register-dataset` and `sophiavl dataset list|show|check|remove`.

Usage:
    sophiavl register-dataset chart --file-path data/json/chart.json --image-base-path data
    sophiavl register-dataset mine --file-path rows.parquet --column question=prompt --column gt=answer
    sophiavl dataset list
    sophiavl dataset show chart
    sophiavl dataset check chart --model builtin:tiny-qwen2.5-vl --max-prompt-length 8192
    sophiavl dataset check builtin:demo@val,extra.jsonl --report bad.jsonl

Exit codes: 0 clean (or bad rows accepted with --skip-bad), 1 bad rows found, 2 a user error.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sophiavl_cli.cli.options import JsonOutput, MaxPixels, MinPixels, ModelRef, Preset, Registry
from sophiavl_cli.console import console, print_json
from sophiavl_cli.data.check import CheckOptions, CheckReport, check_tables, entry_tables
from sophiavl_cli.data.loader import load_tables
from sophiavl_cli.data.problem_types import normalize_problem_type
from sophiavl_cli.data.registry import (
    RELEASED_COLUMNS,
    DatasetEntry,
    get_entry,
    list_entries,
    parse_columns,
    read_registry,
    registry_path,
    remove_entry,
    write_entry,
)
from sophiavl_cli.data.sources import Table as DataTable
from sophiavl_cli.errors import UserError

app = typer.Typer(help="List, show, check and remove registered datasets.", no_args_is_help=True)

# ---- options shared by this group's commands (those shared with other commands: cli/options.py)

MaxLenOpt = typer.Option(8192, "--max-prompt-length", help="Token limit per prompt, image tokens included.")
SkipBadOpt = typer.Option(False, "--skip-bad", help="Accept bad rows: exit 0 and (on register) skip them.")
ReportOpt = typer.Option(None, "--report", help="Where to write the bad rows (JSON lines).")
TemplateOpt = typer.Option(
    None, "--template", help="Prompt template (Jinja file or text) used to count tokens."
)
WorkersOpt = typer.Option(8, "--workers", help="Threads decoding images.")
ExtraTypesOpt = typer.Option(None, "--extra-type", help="A custom problem type to accept (repeatable).")


def register_dataset(
    name: str = typer.Argument(
        ..., help="Registry name (use it in data.train_files, optionally NAME@split)."
    ),
    file_path: str = typer.Option(
        ...,
        "--file-path",
        help="A .json/.jsonl/.parquet file, a folder of parquet files or a hub dataset id.",
    ),
    image_base_path: str = typer.Option(
        "", "--image-base-path", help="Folder relative image paths start from."
    ),
    column: list[str] = typer.Option(
        None,
        "--column",
        help="SRC=DST column mapping (repeatable); default problem=prompt solution=answer path=images.",
    ),
    problem_type: str = typer.Option(None, "--problem-type", help="Type of rows that have no problem_type."),
    registry: Registry = None,
    force: bool = typer.Option(False, "--force", help="Replace an entry of the same name."),
    no_check: bool = typer.Option(False, "--no-check", help="Register without the pre-flight check."),
    model: ModelRef = None,
    max_prompt_length: int = MaxLenOpt,
    min_pixels: MinPixels = 262144,
    max_pixels: MaxPixels = 4194304,
    skip_bad: bool = SkipBadOpt,
    report: Path = ReportOpt,
    extra_type: list[str] = ExtraTypesOpt,
    workers: int = WorkersOpt,
) -> None:
    """Add a dataset to the registry (released dataset_info.json format), checking it first."""
    path = registry_path(registry)
    if name in read_registry(path) and not force:
        raise UserError(f"dataset {name!r} is already in registry {path}; pass --force to replace it")
    if not name or "," in name or "@" in name:
        raise UserError(f"dataset name {name!r} may not be empty or contain ',' or '@'; choose another name")
    entry = DatasetEntry(
        name=name,
        file_path=_stored_path(file_path),
        image_base_path=_stored_path(image_base_path) if image_base_path else "",
        columns=parse_columns(column) if column else dict(RELEASED_COLUMNS),
        problem_type=normalize_problem_type(problem_type) if problem_type else None,
        registry=path,
    )
    if not no_check:
        options = CheckOptions(
            min_pixels=min_pixels,
            max_pixels=max_pixels,
            model=model,
            max_prompt_length=max_prompt_length,
            extra_types=tuple(extra_type or ()),
            workers=workers,
        )
        result = _run_check(entry_tables(entry), options, report or _default_report(name))
        if not result.ok:
            if result.dataset_faults or not skip_bad:
                console.print("[red]not registered[/]: fix the rows above, or pass --skip-bad to skip them")
                raise typer.Exit(1)
            entry = dataclasses.replace(entry, skip_rows=result.skip_rows())
    write_entry(entry, path, force=force)
    skipped = sum(len(rows) for rows in entry.skip_rows.values())
    note = f" ({skipped} bad row(s) will be skipped)" if skipped else ""
    console.print(f"registered [bold]{name}[/] in {path}{note}", soft_wrap=True)


@app.command("list")
def list_datasets(
    registry: Registry = None,
    as_json: JsonOutput = False,
) -> None:
    """List the registered datasets."""
    path = registry_path(registry)
    entries = list_entries(path)
    if as_json:
        print_json({entry.name: entry.to_json() for entry in entries})
        return
    if not entries:
        console.print(f"no datasets in {path}; add one with `sophiavl register-dataset`", soft_wrap=True)
        return
    table = Table(title=f"datasets in {path}")
    for header in ("name", "file_path", "image_base_path", "columns", "skipped rows"):
        table.add_column(header)
    for entry in entries:
        columns = ", ".join(f"{src}->{dst}" for src, dst in entry.columns.items())
        skipped = sum(len(rows) for rows in entry.skip_rows.values())
        table.add_row(entry.name, entry.file_path, entry.image_base_path, columns, str(skipped or ""))
    console.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Registry name."), registry: Registry = None) -> None:
    """Show one entry as stored, and where its paths resolve to."""
    path = registry_path(registry)
    entry = get_entry(name, path)
    console.print_json(json.dumps({name: entry.to_json()}, ensure_ascii=False))
    data = entry.resolve_path(entry.file_path)
    where = f"{data} ({'exists' if data.exists() else 'not a local path: read as a hub id'})"
    console.print(f"data: {where}")
    base = entry.image_base()
    if base is not None:
        console.print(f"images: {base} ({'exists' if base.is_dir() else 'MISSING'})")


@app.command("check")
def check(
    spec: str = typer.Argument(
        ..., help="A registry name (all its splits), NAME@split, a file, or a comma list."
    ),
    registry: Registry = None,
    model: ModelRef = None,
    max_prompt_length: int = MaxLenOpt,
    min_pixels: MinPixels = 262144,
    max_pixels: MaxPixels = 4194304,
    skip_bad: bool = SkipBadOpt,
    report: Path = ReportOpt,
    preset: Preset = "sophiavl-r1",
    template: str = TemplateOpt,
    extra_type: list[str] = ExtraTypesOpt,
    workers: int = WorkersOpt,
) -> None:
    """Pre-flight check: per-split counts, bad rows, image and prompt-length problems."""
    options = CheckOptions(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        model=model,
        max_prompt_length=max_prompt_length,
        preset=preset,
        template=template,
        extra_types=tuple(extra_type or ()),
        workers=workers,
    )
    tables = load_tables(spec, registry=registry, all_splits=True)
    result = _run_check(tables, options, report or _default_report(spec))
    if not result.ok and not skip_bad:
        raise typer.Exit(1)


@app.command("remove")
def remove(name: str = typer.Argument(..., help="Registry name."), registry: Registry = None) -> None:
    """Remove one entry (the others are left exactly as they are)."""
    path = registry_path(registry)
    remove_entry(name, path)
    console.print(f"removed [bold]{name}[/] from {path}", soft_wrap=True)


# ---- helpers


def _stored_path(value: str) -> str:
    """Local paths are stored absolute (the registry may be read from anywhere); hub ids as given."""
    local = Path(value).expanduser()
    return str(local.resolve()) if local.exists() else value


def _default_report(spec: str) -> Path:
    return Path(f"dataset-check-{re.sub(r'[^A-Za-z0-9_.-]+', '_', spec)[:60]}.jsonl")


def _run_check(tables: list[DataTable], options: CheckOptions, report_path: Path) -> CheckReport:
    with Progress(
        TextColumn("checking images"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
    ) as progress:
        task = progress.add_task("images", total=None)

        def on_image(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        result = check_tables(tables, options, on_image=on_image)
    _render(result, options)
    if not result.ok:
        written = result.write_bad_rows(report_path)
        console.print(f"[red]{len(result.bad_rows)} bad row(s)[/]; details in {written}", soft_wrap=True)
    else:
        console.print("[green]no bad rows[/]")
    return result


def _render(result: CheckReport, options: CheckOptions) -> None:
    types = sorted({kind for counter in result.rows.values() for kind in counter})
    rows_table = Table(title="rows per split and problem_type")
    for header in ("dataset", "split", "rows", *types):
        rows_table.add_column(header, justify="right" if header not in ("dataset", "split") else "left")
    for (source, split), counter in result.rows.items():
        rows_table.add_row(
            source, split, str(sum(counter.values())), *(str(counter.get(k, 0)) for k in types)
        )
    console.print(rows_table)

    faults_table = Table(title="problems")
    for header in ("check", "rows", "first example"):
        faults_table.add_column(header)
    by_field = result.faults_by_field()
    labels = {
        "problem_type": "missing/unknown problem type",
        "prompt": "prompt empty, too long or not buildable",
        "answer": "empty answer",
        "options": "multiple choice without options",
        "images": "image missing or undecodable",
    }
    for field_name, label in labels.items():
        first = next((f for f in result.faults if f.field == field_name), None)
        example = f"{first.where}: {first.message}" if first else ""
        faults_table.add_row(label, str(by_field.get(field_name, 0)), example)
    bounds = f"{options.min_pixels}..{options.max_pixels}"
    faults_table.add_row(f"images outside {bounds} px (resized)", str(result.images_outside_bounds), "")
    console.print(faults_table)
    tokens = (
        f", longest prompt {result.max_prompt_tokens} tokens (limit {options.max_prompt_length})"
        if result.max_prompt_tokens is not None
        else " (pass --model to check prompt lengths)"
    )
    console.print(f"{result.num_rows} rows, {result.num_images} distinct images{tokens}")
