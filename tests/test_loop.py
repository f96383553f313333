"""The step loop both trainers share (`engine/loop.py`), driven with real signals and a real JSONL
logger: what is validated, saved and logged, and that a stop request never loses a finished step."""

from __future__ import annotations

import json
import os
import signal
from contextlib import ExitStack
from pathlib import Path

from sophiavl_cli.config.recipe import TrainerConfig
from sophiavl_cli.engine.lifecycle.signals import StopFlag
from sophiavl_cli.engine.loop import Loop, run_steps
from sophiavl_cli.engine.observe.loggers import JsonlBackend, MultiLogger


def _run(tmp_path: Path, total: int, *, sigterm_in: str = "", at: int = 0, **trainer: object):
    """Run `total` steps; SIGTERM to this process inside `sigterm_in` ("step"/"validate") of step `at`."""
    calls: dict[str, list[int]] = {"step": [], "validate": [], "save": []}

    def record(kind: str, step: int) -> None:
        calls[kind].append(step)
        if kind == sigterm_in and step == at:
            os.kill(os.getpid(), signal.SIGTERM)

    def step_fn(step: int) -> dict[str, float]:
        record("step", step)
        return {"loss": float(step)}

    def validate(step: int) -> dict[str, float]:
        record("validate", step)
        return {"val/score": 1.0}

    def save(step: int) -> Path:
        calls["save"].append(step)
        return tmp_path / f"global_step_{step}"

    loop = Loop(
        trainer=TrainerConfig.model_validate(trainer),
        loggers=MultiLogger([JsonlBackend(tmp_path, resume_step=0)]),
        run_dir=tmp_path,
        start_step=0,
        total_steps=total,
        step=step_fn,
        save=save,
        validate=validate,
    )
    with ExitStack() as stack, StopFlag() as stop:
        result = run_steps(loop, stop, stack)
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return result, calls, logged


def test_without_a_signal_it_validates_saves_and_logs_on_schedule(tmp_path):
    result, calls, logged = _run(tmp_path, 5, val_freq=2, save_freq=2, val_before_train=True)
    assert calls == {"step": [1, 2, 3, 4, 5], "validate": [0, 2, 4, 5], "save": [2, 4, 5]}
    assert [row["step"] for row in logged] == [0, 1, 2, 3, 4, 5]
    assert "timing/save" in logged[2] and "timing/val" in logged[2] and "timing/save" not in logged[1]
    assert (
        not result.interrupted and result.last_step == 5 and result.checkpoint == tmp_path / "global_step_5"
    )


def test_a_signal_during_a_step_ends_the_run_after_it_with_its_checkpoint_and_no_validation(tmp_path):
    result, calls, logged = _run(tmp_path, 5, sigterm_in="step", at=2, val_freq=1, save_freq=-1)
    assert calls == {"step": [1, 2], "validate": [1], "save": [2]}
    assert [row["step"] for row in logged] == [1, 2] and "timing/save" in logged[1]
    assert result.interrupted and result.stop_signal == signal.SIGTERM
    assert result.checkpoint == tmp_path / "global_step_2"


def test_a_signal_after_the_save_decision_still_saves_the_finished_step(tmp_path):
    # during step 2's validation the loop has already decided step 2 needs no checkpoint
    result, calls, logged = _run(tmp_path, 5, sigterm_in="validate", at=2, val_freq=1, save_freq=-1)
    assert calls == {"step": [1, 2], "validate": [1, 2], "save": [2]}
    assert [row["step"] for row in logged] == [1, 2]
    assert result.interrupted and result.last_step == 2 and result.checkpoint == tmp_path / "global_step_2"


def test_stop_after_steps_ends_this_invocation_with_a_checkpoint(tmp_path):
    result, calls, _ = _run(tmp_path, 5, stop_after_steps=3, save_freq=-1, val_freq=-1)
    assert calls["step"] == [1, 2, 3] and calls["save"] == [3] and not result.interrupted
