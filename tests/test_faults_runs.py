"""Faults around a run folder, round 3, before Ray: starting over keeps the earlier run (never
mixed, pruned or cut) and the lines printed are safe to follow; an unreadable `latest`, a missing
`complete` marker, an earlier run's unfinished save and a full disk are each one line.

Checkpoints here are real DCP checkpoints of a small network (tests/fsdp_fixtures.py) committed by
the real `CheckpointManager`; the commands are the real CLI, in-process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cli_fixtures import committed_checkpoint, ray_started, run_cli

from sophiavl_cli.cli.train import continue_hint
from sophiavl_cli.config import load_recipe
from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.engine.checkpoint.store import CheckpointManager
from sophiavl_cli.engine.lifecycle.fresh_start import holds_a_run
from sophiavl_cli.engine.lifecycle.run_folder import opened_run

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


def _planted_run(run_dir: Path, steps: int, total: int, recipe: str | None = None) -> dict[str, bytes]:
    """A run that took `steps` steps: a checkpoint per step, metrics per step; returns its files."""
    manager = CheckpointManager(run_dir / "checkpoints")
    for step in range(1, steps + 1):
        committed_checkpoint(manager, step, {"total_steps": total}, recipe)
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
    code, out = run_cli(capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}")
    assert code == 0 and "already finished (step 4 of 4)" in out, out
    assert "--resume none to start over (this run is kept, moved aside)" in out
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out = run_cli(capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}", "--resume", "none",
                     f"data.train_files={empty}")  # fmt: skip
    assert code == 2 and f"no rows in {empty}" in out, out
    (aside,) = _aside(run_dir)
    assert f"the earlier run in {run_dir} is kept, moved to {aside}" in out
    assert _files(aside) == before and not ray_started()


def test_the_closing_line_never_says_to_repeat_a_start_over():
    assert continue_hint("auto") == "continue: the same command again (--resume auto is the default)"
    assert "without --resume none" in continue_hint("none")
    assert "without --resume runs/x/checkpoints/global_step_2" in continue_hint(
        "runs/x/checkpoints/global_step_2"
    )


# --------------------------------------------------------------------------- 11. the disk and the checkpoint folder


def test_an_earlier_runs_unfinished_save_is_removed_at_start_with_a_line(tmp_path):
    recipe = load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"])
    run_dir = tmp_path / "sophiavl" / "quickstart"
    _planted_run(run_dir, steps=1, total=4)
    stale = run_dir / "checkpoints" / ".tmp-global_step_2-99999"
    (stale / "dcp").mkdir(parents=True)
    (stale / "dcp" / "__0_0.distcp").write_bytes(b"\0" * 250_000)  # a shard written before the kill
    said: list[str] = []
    with opened_run(recipe, "auto", said.append) as (_, checkpoint, _stop):
        assert not stale.exists()
        assert checkpoint == run_dir / "checkpoints" / "global_step_1"
    assert said == [
        f"removed what an interrupted save left in {run_dir / 'checkpoints'} (.tmp-global_step_2-99999; 0.2 MiB)"
    ]


def _finished_run_with(tmp_path: Path) -> Path:
    """A finished quickstart run (step 4 of 4) with an older step 2; its checkpoints folder."""
    run_dir = tmp_path / "sophiavl" / "quickstart"
    recipe = dump_recipe(load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"]))
    manager = CheckpointManager(run_dir / "checkpoints")
    committed_checkpoint(manager, 2, {"total_steps": 4}, recipe)
    committed_checkpoint(manager, 4, {"total_steps": 4}, recipe)
    return manager.root


def test_a_latest_pointer_that_is_not_utf8_is_one_line_and_the_newest_checkpoint_is_taken(tmp_path, capsys):
    from sophiavl_cli.engine.checkpoint.merge import find_default_checkpoint

    root = _finished_run_with(tmp_path)
    (root / "latest").write_bytes(b"global_step_\xff\xfe4\n")
    code, out = run_cli(capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}")
    assert code == 0, out
    assert (
        f"{root / 'latest'}: not a checkpoint name (its bytes are not UTF-8 text); taking global_step_4 instead"
        in out
    )
    assert "already finished (step 4 of 4)" in out and "Traceback" not in out
    said: list[str] = []
    assert (
        find_default_checkpoint(tmp_path, said.append) == root / "global_step_4"
    )  # what `sophiavl merge` takes
    assert said == [
        f"{root / 'latest'}: not a checkpoint name (its bytes are not UTF-8 text); taking global_step_4 instead"
    ]


def test_a_checkpoint_whose_complete_marker_is_gone_is_named_and_the_older_one_taken(tmp_path, capsys):
    from sophiavl_cli.engine.checkpoint.merge import find_default_checkpoint

    root = _finished_run_with(tmp_path)
    recipe = dump_recipe(load_recipe(QUICKSTART, [f"trainer.output_dir={tmp_path}"]))
    newest = committed_checkpoint(CheckpointManager(root), 6, {"total_steps": 8}, recipe)
    (newest / "complete").unlink()  # deleted by hand, or never written
    expected = (
        f"{newest}: its `complete` is missing, so the checkpoint is incomplete; taking global_step_4 instead"
    )
    said: list[str] = []
    assert find_default_checkpoint(tmp_path, said.append) == root / "global_step_4"
    assert said == [expected]
    code, out = run_cli(capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}")
    assert code == 0 and expected in out and "already finished (step 4 of 4)" in out, out


UNSHARE = shutil.which("unshare")


def _on_a_full_disk(tmp_path: Path, script: str, size: str = "1m") -> subprocess.CompletedProcess[str]:
    """Run `script` (bash) with a tmpfs of `size` mounted on tmp_path/disk, in a private mount
    namespace (`unshare --map-root-user --mount`: no privileges needed where user namespaces are on)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    command = f"mount -t tmpfs -o size={size} tmpfs {disk} && cd {ROOT} && {script}"
    return subprocess.run(
        [UNSHARE, "--map-root-user", "--mount", "bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "300", "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
    )


def _unshare_works() -> bool:
    if UNSHARE is None:
        return False
    probe = subprocess.run([UNSHARE, "--map-root-user", "--mount", "true"], capture_output=True, timeout=60)
    return probe.returncode == 0


needs_a_small_disk = pytest.mark.skipif(
    not _unshare_works(), reason="needs `unshare --map-root-user --mount` to mount a small tmpfs"
)


@needs_a_small_disk
def test_a_full_disk_mid_run_is_one_line_naming_the_folder_and_a_checkpoints_size(tmp_path):
    code = textwrap.dedent(
        f"""
        import fsdp_fixtures as fx
        from sophiavl_cli.config import load_recipe
        from sophiavl_cli.engine.checkpoint.sharded import save_sharded
        from sophiavl_cli.engine.checkpoint.store import CheckpointManager
        from sophiavl_cli.engine.lifecycle.run_folder import opened_run
        from sophiavl_cli.errors import UserError
        from sophiavl_cli.fileio import atomic_write_json

        recipe = load_recipe({str(QUICKSTART)!r}, ["trainer.output_dir={tmp_path / "disk"}"])
        manager = CheckpointManager("{tmp_path / "disk"}/sophiavl/quickstart/checkpoints")
        model, optimizer = fx.tiny_net(seed=1, sharded=False)
        tmp = manager.begin(1)
        save_sharded(tmp, model, optimizer)
        manager.commit(tmp, 1, {{"step": 1, "total_steps": 4}})
        try:
            with opened_run(recipe, "auto", print) as (stack, checkpoint, stop):
                atomic_write_json(manager.root.parent / "workers.json", ["x" * 4096] * 1000)  # 4 MB > 1 MB disk
        except UserError as exc:
            print("ERROR", exc)
        """
    )
    (tmp_path / "run.py").write_text(code)
    done = _on_a_full_disk(tmp_path, f"{sys.executable} {tmp_path / 'run.py'}")
    assert done.returncode == 0, done.stderr
    (line,) = [text for text in done.stdout.splitlines() if text.startswith("ERROR ")]
    run_dir = tmp_path / "disk" / "sophiavl" / "quickstart"
    assert line.startswith(f"ERROR {run_dir}: no space left on its disk (")
    assert "; a checkpoint of this run needs about " in line and "(the size of global_step_1)" in line
    assert "Traceback" not in done.stdout + done.stderr
    assert not list(run_dir.glob(".workers*"))  # the cut-short temp file is gone: nothing half-written


@needs_a_small_disk
def test_any_command_on_a_full_disk_ends_in_one_line_not_a_traceback(tmp_path):
    from data_fixtures import write_sophiavl_set

    data, _ = write_sophiavl_set(tmp_path / "data")
    script = (
        f"head -c 1048576 /dev/zero > {tmp_path / 'disk' / 'filler'} ; "  # fill the disk
        f"{sys.executable} -m sophiavl_cli register-dataset mine --file-path {data} "
        f"--registry {tmp_path / 'disk' / 'dataset_info.json'} --no-check"
    )
    done = _on_a_full_disk(tmp_path, script)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "error: no space left on the disk" in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
