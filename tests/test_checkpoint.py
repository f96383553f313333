"""Checkpoints: real DCP over gloo with FSDP2, crash safety under kill -9, the `latest` pointer and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fsdp_fixtures as fx
import pytest
import torch

from sophiavl_cli.engine.checkpoint.layout import is_complete
from sophiavl_cli.engine.checkpoint.sharded import (
    load_rank_extras,
    load_sharded,
    save_rank_extras,
    save_sharded,
)
from sophiavl_cli.engine.checkpoint.store import CheckpointManager, resolve_resume
from sophiavl_cli.engine.parallel.rng import capture_rng, restore_rng
from sophiavl_cli.errors import UserError

TESTS_DIR = Path(__file__).parent


def write_checkpoint(manager: CheckpointManager, step: int, scale: float = 1.0) -> Path:
    """A real (small, single-process) checkpoint with a known parameter value."""
    model, optimizer = fx.tiny_net(seed=step, sharded=False)
    with torch.no_grad():
        model.head.bias.fill_(scale * step)
    tmp = manager.begin(step)
    save_sharded(tmp, model, optimizer)
    return manager.commit(tmp, step, {"data": {"position": step}})


# --------------------------------------------------------------------------- DCP across world sizes


@pytest.fixture(scope="module")
def saved_at_world_size_2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    step_dir = tmp_path_factory.mktemp("ckpt") / "global_step_1"
    out = tmp_path_factory.mktemp("observed")
    step_dir.mkdir()
    fx.spawn(fx.save_after_one_step, 2, str(step_dir), str(out))
    return step_dir, out


def test_fsdp2_checkpoint_reloads_bit_identically_at_the_same_world_size(
    saved_at_world_size_2: tuple[Path, Path],
) -> None:
    step_dir, out = saved_at_world_size_2
    fx.spawn(fx.load_and_continue, 2, str(step_dir), str(out))
    fx.assert_identical(torch.load(out / "loaded_ws2.pt"), torch.load(out / "after_save.pt"))
    fx.assert_identical(torch.load(out / "next_ws2.pt"), torch.load(out / "after_next.pt"))
    for rank in range(2):  # RNG restored per rank: the same draws as right after the save
        assert torch.load(out / f"extras_ws2_rank_{rank}.pt")["extras_found"]
        assert torch.equal(
            torch.load(out / f"draws_resumed_rank_{rank}.pt"), torch.load(out / f"draws_rank_{rank}.pt")
        )


def test_fsdp2_checkpoint_reshards_to_one_rank_with_identical_state_and_next_step(
    saved_at_world_size_2: tuple[Path, Path],
) -> None:
    step_dir, out = saved_at_world_size_2
    fx.spawn(fx.load_and_continue, 1, str(step_dir), str(out))
    fx.assert_identical(torch.load(out / "loaded_ws1.pt"), torch.load(out / "after_save.pt"))
    fx.assert_identical(torch.load(out / "next_ws1.pt"), torch.load(out / "after_next.pt"))
    assert not torch.load(out / "extras_ws1_rank_0.pt")["extras_found"]  # other world size: re-derive RNG


def test_checkpoint_loads_into_a_plain_model_without_a_process_group(
    saved_at_world_size_2: tuple[Path, Path],
) -> None:
    step_dir, out = saved_at_world_size_2
    result = fx.load_without_process_group(step_dir)
    fx.assert_identical(result["loaded"], torch.load(out / "after_save.pt"))
    fx.assert_identical(result["next"], torch.load(out / "after_next.pt"))


def test_rng_capture_and_restore_replays_python_numpy_and_torch_draws() -> None:
    import random

    import numpy as np

    state = capture_rng()
    first = (random.random(), np.random.rand(), torch.rand(2))
    restore_rng(state)
    again = (random.random(), np.random.rand(), torch.rand(2))
    assert first[0] == again[0] and first[1] == again[1] and torch.equal(first[2], again[2])


def test_rank_extras_load_with_weights_only_and_are_dropped_at_another_world_size(tmp_path: Path) -> None:
    for rank in range(2):
        save_rank_extras(tmp_path, rank, {"rng": capture_rng(), "seen": [rank, "x"]}, world_size=2)
    loaded = load_rank_extras(tmp_path, 1, world_size=2)
    assert loaded is not None and loaded["seen"] == [1, "x"]
    assert load_rank_extras(tmp_path, 0, world_size=4) is None
    assert load_rank_extras(tmp_path, 0, world_size=1) is None


# --------------------------------------------------------------------------- crash safety


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_intact_and_resumable(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path / "checkpoints", save_limit=2)
    previous = write_checkpoint(manager, step=1)
    proc = subprocess.Popen(
        [
            sys.executable,
            str(TESTS_DIR / "fsdp_fixtures.py"),
            "kill_me_while_saving",
            str(manager.root),
            "24",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS_DIR.parent)},
    )
    deadline = time.monotonic() + 120
    killed_mid_save = False
    while time.monotonic() < deadline and proc.poll() is None:
        shards = list(manager.root.glob(".tmp-global_step_2-*/dcp/*.distcp"))
        if shards and shards[0].stat().st_size > 0:
            proc.send_signal(signal.SIGKILL)
            killed_mid_save = not list(manager.root.glob(".tmp-global_step_2-*/dcp/.metadata"))
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read() if proc.stdout else ""
    assert killed_mid_save, "the save finished before the kill; the test needs a bigger model"
    assert list(manager.root.glob(".tmp-global_step_2-*")), "the interrupted save left its temp folder"
    assert not (manager.root / "global_step_2").exists()

    assert manager.find_latest() == previous
    assert resolve_resume("auto", tmp_path) == previous
    model, optimizer = fx.tiny_net(seed=7, sharded=False)
    load_sharded(previous, model, optimizer)
    assert torch.all(model.head.bias == 1.0)
    assert manager.load_driver_state(previous)["data"] == {"position": 1}

    resumed = CheckpointManager(manager.root, save_limit=2)
    write_checkpoint(resumed, step=2)  # the next save cleans the leftover up
    assert not list(manager.root.glob(".tmp-*"))
    assert resumed.find_latest() == manager.root / "global_step_2"


def test_latest_falls_back_to_the_highest_complete_checkpoint(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, save_limit=-1)
    write_checkpoint(manager, step=1)
    second = write_checkpoint(manager, step=2)
    (tmp_path / "global_step_9").mkdir()  # no marker: a folder someone copied by hand, half-way
    (tmp_path / ".tmp-global_step_3-1").mkdir()
    (tmp_path / "latest").write_text("global_step_9\n")
    assert manager.find_latest() == second
    (tmp_path / "latest").unlink()
    assert manager.find_latest() == second


def test_latest_pointer_wins_over_a_newer_folder_renamed_just_before_a_crash(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, save_limit=-1)
    first = write_checkpoint(manager, step=1)
    write_checkpoint(manager, step=2)
    (tmp_path / "latest").write_text("global_step_1\n")  # crash between the rename and the pointer update
    assert manager.find_latest() == first
    assert is_complete(tmp_path / "global_step_2")


def test_commit_refuses_a_folder_the_workers_did_not_finish(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, save_limit=-1)
    tmp = manager.begin(3)
    with pytest.raises(RuntimeError, match=r"did not finish saving"):
        manager.commit(tmp, 3, {})
    assert manager.find_latest() is None


def test_save_limit_prunes_the_oldest_and_never_the_new_one(tmp_path: Path) -> None:
    manager = CheckpointManager(tmp_path, save_limit=2)
    for step in (1, 2, 3, 4):
        write_checkpoint(manager, step)
    assert [p.name for p in manager.complete_checkpoints()] == ["global_step_3", "global_step_4"]
    assert (tmp_path / "latest").read_text().strip() == "global_step_4"
    redo = write_checkpoint(manager, step=2)  # resumed from an older step: the new one is kept
    assert redo in manager.complete_checkpoints() and manager.find_latest() == redo
    assert len(manager.complete_checkpoints()) == 2


def test_commit_writes_driver_state_hf_files_and_recipe(tmp_path: Path) -> None:
    hf = tmp_path / "hf"
    hf.mkdir()
    for name, text in {
        "config.json": "{}",
        "generation_config.json": '{"temperature": 0.7}',
        "tokenizer.json": "{}",
        "chat_template.jinja": "{{ messages }}",
        "preprocessor_config.json": "{}",
        "model.safetensors": "weights",
        "model.safetensors.index.json": "{}",
    }.items():
        (hf / name).write_text(text)
    manager = CheckpointManager(tmp_path / "checkpoints")
    model, optimizer = fx.tiny_net(seed=0, sharded=False)
    tmp = manager.begin(5)
    save_sharded(tmp, model, optimizer)
    final = manager.commit(
        tmp, 5, {"scheduler": {"last_epoch": 5}}, hf_source_dir=hf, recipe_yaml="trainer: {}\n"
    )
    copied = sorted(p.name for p in (final / "huggingface").iterdir())
    assert copied == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "preprocessor_config.json",
        "tokenizer.json",
    ]
    state = json.loads((final / "driver_state.json").read_text())
    assert state["step"] == 5 and state["scheduler"] == {"last_epoch": 5}
    assert (final / "recipe.yaml").read_text() == "trainer: {}\n"
    tmp = manager.begin(6)
    save_sharded(tmp, model, optimizer)
    with pytest.raises(ValueError, match="not JSON compliant"):
        manager.commit(tmp, 6, {"loss": float("nan")})


def test_resume_argument_accepts_auto_none_a_run_folder_and_a_step_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert resolve_resume("auto", run_dir) is None
    manager = CheckpointManager(run_dir / "checkpoints")
    first = write_checkpoint(manager, step=1)
    second = write_checkpoint(manager, step=2)
    assert resolve_resume("auto", run_dir) == second
    assert resolve_resume("none", run_dir) is None
    assert resolve_resume(str(run_dir), tmp_path) == second
    assert resolve_resume(str(first), tmp_path) == first
    (first / "complete").unlink()
    with pytest.raises(UserError, match="incomplete"):
        resolve_resume(str(first), tmp_path)
    with pytest.raises(UserError, match="no such folder"):
        resolve_resume(str(tmp_path / "nope"), tmp_path)
