"""Running `sophiavl` in-process and checking what a stopped command left behind, for the fault tests."""

from __future__ import annotations

import sys
from pathlib import Path

import fsdp_fixtures as fx
import pytest

from sophiavl_cli.cli.app import main
from sophiavl_cli.engine.checkpoint.sharded import save_sharded
from sophiavl_cli.engine.checkpoint.store import CheckpointManager


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """Run `sophiavl ARGS` in-process; (exit code, stdout + stderr with line wraps undone)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def ray_started() -> bool:
    """Whether this process started (or joined) Ray: a pre-flight stop must come before it."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def committed_checkpoint(
    manager: CheckpointManager, step: int, state: dict | None = None, recipe: str | None = None
) -> Path:
    """A real, committed checkpoint of a tiny network at `step` (DCP shards, marker, driver state)."""
    model, optimizer = fx.tiny_net(seed=step, sharded=False)
    tmp = manager.begin(step)
    save_sharded(tmp, model, optimizer)
    return manager.commit(tmp, step, {"step": step, **(state or {})}, recipe_yaml=recipe)
