"""Loggers (JSONL, console, TensorBoard, optional W&B / SwanLab) and the PNG training curves."""

from __future__ import annotations

import importlib.util
import io
import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.engine.observe.curves import plot_curves, read_series
from sophiavl_cli.engine.observe.loggers import NullLogger, build_loggers
from sophiavl_cli.errors import MissingExtraError
from sophiavl_cli.metrics.keys import SUMMARY_KEYS
from sophiavl_cli.metrics.registry import metric


def recipe_with(logger: list[str], log_freq: int = 1) -> Recipe:
    return Recipe.model_validate({"trainer": {"logger": logger, "log_freq": log_freq}})


def step_metrics(step: int) -> dict[str, float]:
    return {
        "reward/outcome": 0.1 * step,
        "reward/thinking": 0.5 + 0.01 * step,
        "reward/final": 0.1 * step + 0.2,
        "trust/gamma": 1.0 - 0.01 * step,
        "trust/weight": 0.3 * math.exp(-step / 50),
        "actor/kl": 0.001 * step,
        "response/length_mean": 40.0 + step,
        "response/length_max": 60.0 + 2 * step,
        "timing/step": 1.5,
    }


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_has_one_strict_json_object_per_step_flushed_as_it_goes(tmp_path: Path) -> None:
    loggers = build_loggers(recipe_with(["jsonl"]), tmp_path)
    loggers.log(1, {"actor/pg_loss": 0.5, "actor/kl": float("nan")})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()  # readable before close
    assert json.loads(lines[0]) == {"step": 1, "actor/pg_loss": 0.5, "actor/kl": None}
    loggers.log_generations(1, [{"prompt": "2+2?", "response": "<answer>4</answer>", "reward": 1.0}])
    loggers.close()
    loggers.close()
    assert read_jsonl(tmp_path / "generations.jsonl") == [
        {"step": 1, "prompt": "2+2?", "response": "<answer>4</answer>", "reward": 1.0}
    ]


def test_resumed_run_drops_entries_after_the_checkpoint_so_the_log_matches_an_uninterrupted_run(
    tmp_path: Path,
) -> None:
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    loggers = build_loggers(recipe_with(["jsonl"]), straight)
    for step in range(1, 5):
        loggers.log(step, step_metrics(step))
    loggers.close()

    first = build_loggers(recipe_with(["jsonl"]), resumed)
    for step in range(1, 4):  # checkpoint at 2, crash after logging 3
        first.log(step, step_metrics(step))
        first.log_generations(step, [{"response": f"r{step}"}])
    first.close()
    with (resumed / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "reward/out')  # torn by the kill
    second = build_loggers(recipe_with(["jsonl"]), resumed, resume_step=2)
    assert [e["step"] for e in read_jsonl(resumed / "metrics.jsonl")] == [1, 2]
    assert [e["step"] for e in read_jsonl(resumed / "generations.jsonl")] == [1, 2]
    for step in (3, 4):
        second.log(step, step_metrics(step))
    second.close()
    assert (resumed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()


def test_without_a_resume_step_the_first_logged_step_decides_the_cut(tmp_path: Path) -> None:
    loggers = build_loggers(recipe_with(["jsonl"]), tmp_path)
    for step in range(1, 6):
        loggers.log(step, {"actor/kl": float(step)})
    loggers.close()
    again = build_loggers(recipe_with(["jsonl"]), tmp_path)
    again.log(3, {"actor/kl": 30.0})
    again.close()
    assert [(e["step"], e["actor/kl"]) for e in read_jsonl(tmp_path / "metrics.jsonl")] == [
        (1, 1.0),
        (2, 2.0),
        (3, 30.0),
    ]


def test_console_prints_a_compact_table_every_log_freq_steps_under_a_progress_bar(tmp_path: Path) -> None:
    output = io.StringIO()
    console = Console(file=output, width=200, force_terminal=False, color_system=None)
    loggers = build_loggers(recipe_with(["console"], log_freq=2), tmp_path, console=console)
    with loggers.progress(total_steps=3):
        for step in (1, 2, 3):
            loggers.log(step, step_metrics(step) | {"rm/calls": 8.0})
    loggers.close()
    lines = output.getvalue().splitlines()
    rows = [line.split() for line in lines if line.strip().startswith(("1/3", "2/3", "3/3"))]
    assert [row[0] for row in rows] == ["2/3", "3/3"]  # every 2nd step, and the last one
    header = next(line.split() for line in lines if line.split()[:1] == ["step"])
    assert header == ["step", "outcome", "thinking", "final", "gamma", "kl", "resp_len", "s/step"]
    assert rows[0][1:3] == ["0.2", "0.52"]  # reward/outcome and reward/thinking at step 2
    assert "calls" not in output.getvalue()  # only the key metrics
    assert lines[-1].startswith("training") and "3/3" in lines[-1]  # the progress bar
    assert (tmp_path / "metrics.jsonl").is_file()  # JSONL is always on


def test_console_columns_are_registered_metrics() -> None:
    for key in SUMMARY_KEYS:
        assert metric(key).key == key


def test_tensorboard_writes_scalars_and_purges_steps_after_a_resume(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    loggers = build_loggers(recipe_with(["tensorboard"]), tmp_path)
    for step in (1, 2, 3):
        loggers.log(step, {"actor/kl": float(step)})
    loggers.log_generations(3, [{"response": "hi"}])
    loggers.close()
    resumed = build_loggers(recipe_with(["tensorboard"]), tmp_path, resume_step=1)
    resumed.log(2, {"actor/kl": 20.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("actor/kl")] == [(1, 1.0), (2, 20.0)]


def test_null_logger_writes_nothing(tmp_path: Path) -> None:
    logger = NullLogger()
    with logger.progress(10):
        logger.log(1, {"actor/kl": 1.0})
        logger.log_generations(1, [{"a": 1}])
    logger.close()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["wandb", "swanlab"])
def test_missing_tracker_names_the_extra_that_installs_it(tmp_path: Path, name: str) -> None:
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")
    with pytest.raises(
        MissingExtraError, match=rf"trainer.logger: {name} needs `{name}`.*sophiavl\[loggers\]"
    ):
        build_loggers(recipe_with([name]), tmp_path)


def test_wandb_offline_run_logs_and_keeps_its_id_for_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    loggers = build_loggers(recipe_with(["wandb"]), tmp_path)
    loggers.log(1, step_metrics(1))
    loggers.log_generations(1, [{"prompt": "p", "response": "r", "reward": 1.0}])
    loggers.close()
    run_id = (tmp_path / "wandb_run_id").read_text().strip()
    assert any(run_id in p.name for p in (tmp_path / "wandb").iterdir())
    again = build_loggers(recipe_with(["wandb"]), tmp_path)
    again.close()
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id


def test_swanlab_offline_run_logs_into_the_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("swanlab")
    monkeypatch.setenv("SWANLAB_MODE", "offline")
    loggers = build_loggers(recipe_with(["swanlab"]), tmp_path)
    loggers.log(1, step_metrics(1))
    loggers.log_generations(1, [{"prompt": "p", "response": "r"}])
    loggers.close()
    assert any((tmp_path / "swanlog").iterdir())


# --------------------------------------------------------------------------- curves


def test_curves_are_pngs_for_the_panels_that_have_data(tmp_path: Path) -> None:
    loggers = build_loggers(recipe_with(["jsonl"]), tmp_path)
    for step in range(1, 41):
        loggers.log(step, step_metrics(step) | ({"val/outcome": 0.02 * step} if step % 10 == 0 else {}))
    loggers.close()
    written = plot_curves(tmp_path / "metrics.jsonl", tmp_path / "curves")
    assert [p.name for p in written] == [
        "reward.png",
        "trust.png",
        "kl.png",
        "response_length.png",
        "overview.png",
    ]
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_curves_skip_absent_keys_and_nulls(tmp_path: Path) -> None:
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(
        '{"step": 1, "reward/outcome": 0.2, "actor/kl": null}\n{"step": 2, "reward/outcome": 0.4}\n{"step": 3, "rew'
    )
    assert read_series(metrics) == {"reward/outcome": ([1, 2], [0.2, 0.4])}
    written = plot_curves(metrics, tmp_path / "curves")
    assert [p.name for p in written] == ["reward.png", "overview.png"]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    assert plot_curves(empty, tmp_path / "none") == []
    assert not (tmp_path / "none").exists()


def test_without_matplotlib_curves_are_skipped_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import sys

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "reward/outcome": 0.2}\n')
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an install without the extra sees
    assert plot_curves(metrics, tmp_path / "curves") == []
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sophiavl[curves]" in err
    assert not (tmp_path / "curves").exists()
