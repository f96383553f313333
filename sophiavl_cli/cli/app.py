"""The `sophiavl` command.

Usage:
    sophiavl doctor
    sophiavl recipe validate recipes/quickstart.yaml trainer.max_steps=2
    sophiavl recipe schema > recipe.schema.json
    sophiavl plan recipes/fullsets.yaml --gpu H100-80GB
"""

from __future__ import annotations

import sys

import typer

from sophiavl_cli import __version__
from sophiavl_cli.cli import dataset, doctor, help_format, recipe  # noqa: F401  (help_format: flags show no <bool>)
from sophiavl_cli.cli import download as download_cli
from sophiavl_cli.cli import eval as eval_cli
from sophiavl_cli.cli import eval_rm as eval_rm_cli
from sophiavl_cli.cli import infer as infer_cli
from sophiavl_cli.cli import merge as merge_cli
from sophiavl_cli.cli import plan as plan_cli
from sophiavl_cli.cli import serve_reward as serve_reward_cli
from sophiavl_cli.cli import train as train_cli
from sophiavl_cli.cli import train_rm as train_rm_cli
from sophiavl_cli.console import fail
from sophiavl_cli.errors import UserError
from sophiavl_cli.fileio import is_disk_full

app = typer.Typer(
    name="sophiavl",
    help="SophiaVL-R1 lifecycle: download, register data, train with Trust-GRPO, merge, infer, eval.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sophiavl {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """SophiaVL-R1 lifecycle: download, register data, train with Trust-GRPO, merge, infer, eval."""


app.command("doctor")(doctor.doctor)
app.add_typer(recipe.app, name="recipe")
app.command("register-dataset")(dataset.register_dataset)
app.add_typer(dataset.app, name="dataset")
app.command("serve-reward")(serve_reward_cli.serve_reward)
app.command("merge")(merge_cli.merge)
app.command("train", epilog=train_cli.EPILOG)(train_cli.train)
app.command("train-rm", epilog=train_rm_cli.EPILOG)(train_rm_cli.train_rm)
app.command("plan", epilog=plan_cli.EPILOG)(plan_cli.plan_command)
app.command("download")(download_cli.download_command)
app.command("infer", epilog=infer_cli.EPILOG)(infer_cli.infer)
app.command("eval", epilog=eval_cli.EPILOG)(eval_cli.eval_command)
app.command("eval-rm", epilog=eval_rm_cli.EPILOG)(eval_rm_cli.eval_rm)
dataset.app.command("check-rm")(eval_rm_cli.check_rm)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry: user errors (and a full disk) become one line and exit code 2, never a
    traceback."""
    try:
        app(args=argv, prog_name="sophiavl")
    except UserError as exc:
        fail(str(exc))
        sys.exit(exc.exit_code)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        fail(
            f"no space left on the disk{where}; free space there (or write elsewhere) and run the command again"
        )
        sys.exit(2)
    except (
        KeyboardInterrupt
    ) as exc:  # a `Stopped` (engine/lifecycle/signals.py) carries its message and exit code
        fail(getattr(exc, "message", "interrupted"))
        sys.exit(getattr(exc, "exit_code", 130))


if __name__ == "__main__":
    main()
