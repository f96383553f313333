"""`sophiavl download`: models and data sets by alias or hub id, built-ins into a folder.

Usage:
    sophiavl download                                   # SophiaVL-R1-7B into the HF cache
    sophiavl download thinking-rm
    sophiavl download sophiavl-r1-130k --local-dir data/130k --register
    sophiavl download Qwen/Qwen2.5-VL-3B-Instruct --include '*.json' --include '*.safetensors'
    sophiavl download owner/data --repo-type dataset
    sophiavl download builtin:demo --local-dir demo --register
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from sophiavl_cli.cli.options import Registry
from sophiavl_cli.console import console
from sophiavl_cli.data.registry import registry_path
from sophiavl_cli.errors import UserError
from sophiavl_cli.hub.download import (
    DEFAULT_NAME,
    DownloadResult,
    all_aliases,
    download,
    human_size,
    resolve_target,
)

_ALIASES_HELP = ", ".join(f"{alias} ({repo})" for alias, (repo, _kind) in all_aliases().items())


def download_command(
    name: str = typer.Argument(
        None,
        help=f"An alias, owner/name, or builtin:NAME; default {DEFAULT_NAME}. Aliases: {_ALIASES_HELP}.",
        show_default=False,
    ),
    local_dir: Path = typer.Option(
        None, "--local-dir", help="Put the files in this folder instead of the HF cache (HF_HOME)."
    ),
    revision: str = typer.Option(None, "--revision", help="Branch, tag or commit (default: main)."),
    include: list[str] = typer.Option(None, "--include", help="Only files matching this glob (repeatable)."),
    exclude: list[str] = typer.Option(None, "--exclude", help="Skip files matching this glob (repeatable)."),
    token: str = typer.Option(
        None,
        "--token",
        help="Hub token; default: HF_TOKEN or the stored `hf auth login` token.",
        show_default=False,
    ),
    repo_type: str = typer.Option(
        None, "--repo-type", help="model or dataset, for owner/name ids (aliases know theirs)."
    ),
    register: bool = typer.Option(
        False, "--register", help="After a data set download: register its parts and run the data check."
    ),
    registry: Registry = None,
) -> None:
    """Download a model or data set (resumable, HF cache or --local-dir), or materialise a built-in one."""
    if repo_type not in (None, "model", "dataset"):
        raise UserError(f"--repo-type {repo_type}: choose model or dataset")
    target = resolve_target(name, repo_type)  # type: ignore[arg-type]
    if register and target.repo_type != "dataset":
        raise UserError(f"--register is for data sets; {target.name} is a model (drop --register)")
    if target.builtin and (revision or include or exclude):
        raise UserError(f"{target.name} is built here, not downloaded: drop --revision/--include/--exclude")
    result = download(
        target,
        local_dir=local_dir.expanduser() if local_dir else None,
        revision=revision,
        include=include or (),
        exclude=exclude or (),
        token=token,
    )
    _summary(result)
    if register:
        _register(result, registry_path(registry))


def _summary(result: DownloadResult) -> None:
    what = f"{result.target.repo_type} {result.target.repo_id}"
    if result.target.builtin:
        what = result.target.name
    commit = f" @ {result.commit[:10]}" if result.commit else ""
    console.print(
        f"[green]ready[/] {escape(what)}{commit}: {result.num_files} files, {human_size(result.num_bytes)}"
    )
    console.print(str(result.path), markup=False, highlight=False, soft_wrap=True)


def _register(result: DownloadResult, registry: Path) -> None:
    """Register every part, then run the data check on each and summarise it in one table."""
    from sophiavl_cli.data.check import CheckOptions, check_tables, entry_tables
    from sophiavl_cli.hub.register import register_parts

    repo_id = "demo" if result.target.builtin else result.target.repo_id
    parts = register_parts(result.path, repo_id, registry)
    table = Table(title=f"registered in {registry}")
    for header in ("dataset", "status", "rows", "bad rows", "images", "report"):
        table.add_column(header)
    any_bad = False
    with Progress(
        TextColumn("checking {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    ) as progress:
        for part in parts:
            task = progress.add_task(part.entry.name, total=None)

            def on_image(done: int, total: int, task: int = task) -> None:
                progress.update(task, completed=done, total=total)

            report = check_tables(entry_tables(part.entry), CheckOptions(), on_image=on_image)
            progress.remove_task(task)
            report_file = ""
            if not report.ok:
                any_bad = True
                report_file = str(report.write_bad_rows(Path(f"dataset-check-{part.entry.name}.jsonl")))
            table.add_row(
                part.entry.name,
                part.status,
                str(report.num_rows),
                str(len(report.bad_rows)),
                str(report.num_images),
                report_file,
            )
    console.print(table)
    if any_bad:
        console.print(
            "[red]some rows failed the check[/]; see the reports, fix those rows or re-register the part with "
            "`sophiavl register-dataset NAME --file-path FILE --force --skip-bad` to skip them"
        )
        raise typer.Exit(1)
