"""Faults around a run folder, round 3, in-process and before Ray: starting over keeps the earlier
run (never mixed, pruned or cut), and the lines printed are safe to follow.

Checkpoints here are real DCP checkpoints of a small network (tests/fsdp_fixtures.py) committed by
the real `CheckpointManager`; the commands are the real CLI, in-process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import fsdp_fixtures as fx
import pytest

from sophiavl_cli.cli.app import main
from sophiavl_cli.cli.train import continue_hint
from sophiavl_cli.config import load_recipe
from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.engine.checkpoint.sharded import save_sharded
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.lifecycle.fresh_start import holds_a_run
from sophiavl_cli.engine.lifecycle.run_folder import opened_run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, " ".join((captured.out + captured.err).split())


def _ray_started() -> bool:
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _checkpoint(
    manager: CheckpointManager, step: int, state: dict | None = None, recipe: str | None = None
) -> Path:
    model, optimizer = fx.tiny_net(seed=step, sharded=False)
    tmp = manager.begin(step)
    save_sharded(tmp, model, optimizer)
    return manager.commit(tmp, step, {"step": step, **(state or {})}, recipe_yaml=recipe)


def _planted_run(run_dir: Path, steps: int, total: int, recipe: str | None = None) -> dict[str, bytes]:
    """A run that took `steps` steps: a checkpoint per step, metrics per step; returns its files."""
    manager = CheckpointManager(run_dir / "checkpoints")
    for step in range(1, steps + 1):
        _checkpoint(manager, step, {"total_steps": total}, recipe)
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in range(1, steps + 1))
    )
    return _files(run_dir)


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


def _aside(run_dir: Path) -> list[Path]:
    return sorted(run_dir.parent.glob(f"{run_dir.name}.before-*"))


# --------------------------------------------------------------------------- 1. starting over keeps the earlier run


def test_resume_none_moves_the_earlier_run_aside_whole_and_starts_in_an_empty_folder(tmp_path):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}", "trainer.save_limit=1"])
    run_dir = tmp_path / "sophiavl" / "quickstart"
    before = _planted_run(run_dir, steps=3, total=8)
    said: list[str] = []
    with opened_run(recipe, "none", said.append) as (_, checkpoint, _stop):
        assert checkpoint is None
        (aside,) = _aside(run_dir)
        assert holds_a_run(aside) and not holds_a_run(run_dir)
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # the new run's lock, nothing else
    assert _files(aside) == before  # every checkpoint and every metrics line, byte for byte
    assert said == [f"starting over: the earlier run in {run_dir} is kept, moved to {aside}"]
    assert aside.name.startswith("quickstart.before-20") and len(aside.name) == len(
        "quickstart.before-YYYYmmdd-HHMMSS"
    )


def test_a_second_start_over_in_the_same_second_gets_its_own_name(tmp_path):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"])
    run_dir = tmp_path / "sophiavl" / "quickstart"
    first = _planted_run(run_dir, steps=1, total=4)
    with opened_run(recipe, "none", lambda text: None):
        pass
    second = _planted_run(run_dir, steps=2, total=4)
    with opened_run(recipe, "none", lambda text: None):
        pass
    kept = _aside(run_dir)  # a name taken (same second) gets -2: neither run overwrites the other
    assert len(kept) == 2
    assert sorted([_files(p) == first for p in kept]) == [False, True]
    assert sorted([_files(p) == second for p in kept]) == [False, True]


def test_what_a_failed_start_leaves_is_reused_not_moved(tmp_path):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"])
    run_dir = tmp_path / "sophiavl" / "quickstart"
    run_dir.mkdir(parents=True)
    (run_dir / "workers.json").write_text("[]\n")
    (run_dir / "metrics.jsonl").write_text("")
    with opened_run(recipe, "none", lambda text: None):
        pass
    assert _aside(run_dir) == [] and (run_dir / "workers.json").is_file()


def test_resume_auto_with_no_intact_checkpoint_keeps_the_damaged_run_aside(tmp_path):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"])
    run_dir = tmp_path / "sophiavl" / "quickstart"
    _planted_run(run_dir, steps=1, total=4)
    shard = next((run_dir / "checkpoints" / "global_step_1" / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])
    said: list[str] = []
    with opened_run(recipe, "auto", said.append) as (_, checkpoint, _stop):
        assert checkpoint is None
    (aside,) = _aside(run_dir)
    assert "skipping checkpoint global_step_1" in said[0] and said[1].startswith("starting over:")
    assert (aside / "metrics.jsonl").read_text().count("\n") == 1


def test_the_finished_runs_advice_to_start_over_is_safe_to_follow(tmp_path, capsys):
    """`already finished ... --resume none to start over`: following it keeps the finished run. The
    start itself then fails on its data (an empty file), before Ray: the finished run is still whole."""
    run_dir = tmp_path / "sophiavl" / "quickstart"
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"])
    before = _planted_run(run_dir, steps=4, total=4, recipe=dump_recipe(recipe))
    code, out = _cli(capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}")
    assert code == 0 and "already finished (step 4 of 4)" in out, out
    assert "--resume none to start over (this run is kept, moved aside)" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = _cli(capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}", "--resume", "none",
                     f"data.train_files={empty}")  # fmt: skip
    assert code == 2 and f"no rows in {empty}" in out, out
    (aside,) = _aside(run_dir)
    assert f"the earlier run in {run_dir} is kept, moved to {aside}" in out
    assert _files(aside) == before and not _ray_started()


def test_the_closing_line_never_says_to_repeat_a_start_over():
    assert continue_hint("auto") == "continue: the same command again (--resume auto is the default)"
    assert "without --resume none" in continue_hint("none")
    assert "without --resume runs/x/checkpoints/global_step_2" in continue_hint(
        "runs/x/checkpoints/global_step_2"
    )
