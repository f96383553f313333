"""Faults caught before or around a run, in-process and without Ray: the run-folder lock, a finished
run, checkpoint integrity, bounded recipes, pre-flight checks, SIGTERM's grace and the reaper."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fsdp_fixtures as fx
import psutil
import pytest
from cli_fixtures import committed_checkpoint, ray_started, run_cli

from sophiavl_cli.config import load_recipe
from sophiavl_cli.config.loading import dump_recipe
from sophiavl_cli.config.recipe import Recipe
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.engine.checkpoint.integrity import verify_checkpoint
from sophiavl_cli.engine.checkpoint.sharded import save_sharded
from sophiavl_cli.engine.checkpoint.store import CheckpointManager, resolve_resume
from sophiavl_cli.engine.lifecycle.runlock import RunLock
from sophiavl_cli.engine.lifecycle.signals import StopFlag, Stopped
from sophiavl_cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


# --------------------------------------------------------------------------- 3. one trainer per run folder


RM_QUICKSTART = ROOT / "recipes" / "thinking-rm-quickstart.yaml"
# (command, recipe, its run folder under trainer.output_dir, its recipe model): both trainers share
# the run-folder lock, the finished-run check and the pre-flight checks.
TRAINERS = [
    pytest.param("train", QUICKSTART, "sophiavl/quickstart", Recipe, id="train"),
    pytest.param("train-rm", RM_QUICKSTART, "sophiavl/thinking_rm_quickstart", RMRecipe, id="train-rm"),
]


@pytest.mark.parametrize(("command", "recipe_file", "run_name", "model"), TRAINERS)
def test_a_second_trainer_on_a_locked_run_folder_says_who_holds_it_and_exits_2(
    command, recipe_file, run_name, model, tmp_path, capsys
):
    run_dir = tmp_path / run_name
    with RunLock(run_dir):
        code, out = run_cli(capsys, command, str(recipe_file), f"trainer.output_dir={tmp_path}")
    assert code == 2, out
    assert f"another trainer is using this run folder (pid {os.getpid()} on {socket.gethostname()}" in out
    assert not ray_started() and not (run_dir / "recipe.yaml").exists()
    with RunLock(run_dir):  # released when its holder ends (here: leaves the block)
        pass


# --------------------------------------------------------------------------- 4. a finished run is not restarted


@pytest.mark.parametrize(("command", "recipe_file", "run_name", "model"), TRAINERS)
def test_a_finished_run_says_so_before_anything_starts_and_keeps_its_recipe(
    command, recipe_file, run_name, model, tmp_path, capsys
):
    run_dir = tmp_path / run_name
    recipe = load_recipe(recipe_file, [f"trainer.output_dir={tmp_path}"], model=model)
    committed_checkpoint(
        CheckpointManager(run_dir / "checkpoints"), 4, {"total_steps": 4}, dump_recipe(recipe)
    )
    (run_dir / "recipe.yaml").write_text("the finished run's recipe\n")
    code, out = run_cli(capsys, command, str(recipe_file), f"trainer.output_dir={tmp_path}", "data.seed=7")
    assert code == 0, out
    assert f"already finished (step 4 of 4): run dir {run_dir}; pass trainer.max_steps=" in out
    assert not ray_started()
    assert (run_dir / "recipe.yaml").read_text() == "the finished run's recipe\n"
    from sophiavl_cli.engine.lifecycle.preflight import finished_run

    latest = run_dir / "checkpoints" / "global_step_4"
    assert (
        finished_run(
            recipe.model_copy(update={"trainer": recipe.trainer.model_copy(update={"max_steps": 8})}),
            run_dir,
            latest,
        )
        is None
    )
    more_epochs = recipe.trainer.model_copy(
        update={"total_epochs": recipe.trainer.total_epochs + 1, "max_steps": None}
    )
    assert finished_run(recipe.model_copy(update={"trainer": more_epochs}), run_dir, latest) is None


def test_resuming_on_another_model_is_refused_before_ray_starts(tmp_path, capsys, tiny_model_dir):
    """A resume rebuilds the network (and a LoRA run its base weights) from worker.actor.model_path."""
    run_dir = tmp_path / "sophiavl" / "quickstart"
    manager = CheckpointManager(run_dir / "checkpoints")
    model, optimizer = fx.tiny_net(seed=1, sharded=False)
    tmp = manager.begin(2)
    save_sharded(tmp, model, optimizer)
    manager.commit(tmp, 2, {"step": 2, "total_steps": 4}, hf_source_dir=tiny_model_dir)
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model_dir, other)
    config = json.loads((other / "config.json").read_text())
    config["num_hidden_layers"] += 1
    (other / "config.json").write_text(json.dumps(config))
    code, out = run_cli(
        capsys, "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}", f"worker.actor.model_path={other}"
    )
    assert code == 2, out
    assert f"worker.actor.model_path ({other}) is not the model" in out
    assert f"num_hidden_layers {config['num_hidden_layers']} vs {config['num_hidden_layers'] - 1}" in out
    assert "--resume none" in out and not ray_started()


# --------------------------------------------------------------------------- 5. checkpoint integrity


def test_resume_auto_skips_a_truncated_checkpoint_naming_it_and_an_explicit_one_fails(tmp_path):
    run_dir = tmp_path / "run"
    manager = CheckpointManager(run_dir / "checkpoints")
    older = committed_checkpoint(manager, 1)
    newer = committed_checkpoint(manager, 2)
    shard = next((newer / "dcp").glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:-10])  # a save cut short by a full disk
    notes: list[str] = []
    assert resolve_resume("auto", run_dir, notes.append) == older
    assert len(notes) == 1 and "skipping checkpoint global_step_2" in notes[0] and str(shard) in notes[0]
    with pytest.raises(UserError, match=rf"--resume {newer}: {shard}: \d+ bytes, \d+ when saved"):
        resolve_resume(str(newer), tmp_path)


def test_a_flipped_byte_is_caught_by_the_checksum_and_an_empty_shard_by_its_size(tmp_path):
    manager = CheckpointManager(tmp_path / "checkpoints")
    checkpoint = committed_checkpoint(manager, 1)
    assert verify_checkpoint(checkpoint) is None
    shard = next((checkpoint / "dcp").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert (
        verify_checkpoint(checkpoint) == f"{shard}: checksum differs from the one saved (the file is corrupt)"
    )
    shard.write_bytes(b"")
    assert f"{shard}: 0 bytes" in (verify_checkpoint(checkpoint) or "")


def test_checkpoints_with_the_old_one_line_marker_still_resume(tmp_path):
    manager = CheckpointManager(tmp_path / "run" / "checkpoints")
    checkpoint = committed_checkpoint(manager, 3)
    (checkpoint / "complete").write_text("global_step_3\n")
    assert resolve_resume("auto", tmp_path / "run") == checkpoint


# --------------------------------------------------------------------------- 7. recipes that must not hurt


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_a_yaml_alias_bomb_fails_in_one_line_at_once(tmp_path):
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    levels += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    path = _recipe(tmp_path, "reward:\n  custom:\n" + "".join(f"    {line}\n" for line in levels))
    with pytest.raises(UserError, match=r"expands to more than \d+ values") as info:
        load_recipe(path)
    assert "\n" not in str(info.value)


def test_thousands_of_nested_maps_fail_in_one_line_not_a_recursion_error(tmp_path):
    path = _recipe(tmp_path, "reward:\n  custom: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n")
    with pytest.raises(UserError, match=r"nested deeper than \d+ levels"):
        load_recipe(path)


def test_names_are_names_not_paths(tmp_path):
    for bad in ("../../x", "a/b", "..", ""):
        with pytest.raises(UserError, match=r"trainer\.experiment_name: .*plain name"):
            load_recipe(QUICKSTART, [f"trainer.experiment_name={bad}"])
    with pytest.raises(UserError, match=r"trainer\.project_name"):
        load_recipe(QUICKSTART, ["trainer.project_name=/tmp/elsewhere"])
    assert (
        load_recipe(QUICKSTART, ["trainer.experiment_name=run-2_b.1"]).trainer.experiment_name == "run-2_b.1"
    )


def test_an_empty_recipe_must_name_its_model_and_data(tmp_path):
    with pytest.raises(
        UserError, match=r"must name its model and data; set worker\.actor\.model_path and data\.train_files"
    ):
        load_recipe(_recipe(tmp_path, ""))
    named = load_recipe(
        _recipe(tmp_path, "trainer: {n_workers_per_node: 1}\n"),
        ["worker.actor.model_path=builtin:tiny-qwen2.5-vl", "data.train_files=builtin:demo@train"],
    )
    assert named.worker.actor.model_path == "builtin:tiny-qwen2.5-vl"


@pytest.mark.parametrize("key", ["sk-proj-4f9aQ2xLm8Zt7Rk1Wc3Vb6Np0", "AbCdEfGh12345678IjKlMnOp9876"])
def test_an_api_key_pasted_as_api_key_env_is_refused_and_never_echoed(key, tmp_path, capsys):
    code, out = run_cli(
        capsys,
        "train",
        str(QUICKSTART),
        f"trainer.output_dir={tmp_path}",
        f"reward.thinking.api_key_env={key}",
    )
    assert code == 2 and "reward.thinking.api_key_env" in out and "looks like an API key" in out
    assert key not in out and not (tmp_path / "sophiavl").exists()
    with pytest.raises(UserError, match="environment variable name"):
        load_recipe(QUICKSTART, ["reward.thinking.api_key_env=my key"])
    assert (
        load_recipe(QUICKSTART, ["reward.thinking.api_key_env=MY_RM_KEY"]).reward.thinking.api_key_env
        == "MY_RM_KEY"
    )


# --------------------------------------------------------------------------- 10. every start-up problem at once


def test_every_start_up_problem_is_reported_together_before_ray_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # what a machine without vLLM looks like to import
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, out = run_cli(
        capsys,
        "train",
        str(QUICKSTART),
        f"trainer.output_dir={tmp_path}",
        "worker.rollout.backend=vllm",
        f"worker.actor.model_path={tmp_path / 'no-model'}",
        "data.train_files=not_registered_anywhere",
        "trainer.device=cuda",
    )
    assert code == 2, out
    assert "cannot start training (4 problems)" in out
    assert "pip install 'sophiavl[gpu]'" in out
    assert "worker.actor.model_path:" in out and "data.train_files:" in out
    assert "this machine has no GPU: trainer.device=cuda needs 2; set trainer.device=cpu" in out
    assert not ray_started()
    assert not (tmp_path / "sophiavl").exists()


def test_every_start_up_problem_of_train_rm_is_reported_together_before_ray_starts(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    code, out = run_cli(
        capsys,
        "train-rm",
        str(RM_QUICKSTART),
        f"trainer.output_dir={tmp_path}",
        f"model.model_path={tmp_path / 'no-model'}",
        "data.val_files=not_registered_either",
        "trainer.device=cuda",
    )
    assert code == 2, out
    assert "cannot start training (3 problems)" in out
    assert "model.model_path:" in out and "data.val_files:" in out and "data.train_files" not in out
    assert "this machine has no GPU: trainer.device=cuda needs" in out
    assert not ray_started()
    assert not (tmp_path / "sophiavl").exists()


def test_a_served_reward_model_is_checked_by_its_own_key_and_one_problem_is_one_line(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("OPENAI_API_URL", raising=False)
    code, out = run_cli(
        capsys,
        "train",
        str(QUICKSTART),
        f"trainer.output_dir={tmp_path}",
        "reward.thinking.serve_model=null",
        f"reward.thinking.serve.model={tmp_path / 'no-rm'}",
        "reward.thinking.serve.backend=hf",
        "reward.thinking.serve.gpus=0",
    )
    assert code == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot start training: reward.thinking.serve.model:" in lines[0], out
    assert not ray_started()


# --------------------------------------------------------------------------- 2. SIGTERM's grace period


def test_sigterm_asks_to_stop_and_a_step_past_the_grace_is_abandoned_with_exit_143():
    before = signal.getsignal(signal.SIGTERM)  # SIG_DFL, or Ray's if an earlier test ran ray.init here
    with StopFlag(grace_s=0.2) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(Stopped) as info:
            for _ in range(200):  # a step that never ends
                time.sleep(0.05)
    assert info.value.exit_code == 143 and "trainer.stop_grace_s=0.2" in info.value.message
    assert signal.getsignal(signal.SIGTERM) is before  # restored


def test_a_step_that_ends_within_the_grace_disarms_the_timer():
    with StopFlag(grace_s=0.3) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        stop.step_done()
        time.sleep(0.6)  # the save after the step is not cut short
    assert stop.signum == signal.SIGTERM


# --------------------------------------------------------------------------- 1. nothing outlives the trainer

_PARENT = """
import socket, subprocess, sys, time
from sophiavl_cli.engine.lifecycle.reaper import start_reaper
start_reaper()
server = subprocess.Popen([sys.executable, "-c", '''
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); print(s.getsockname()[1], flush=True); time.sleep(600)
'''], stdout=subprocess.PIPE, text=True, start_new_session=True)
sleeper = subprocess.Popen(["sleep", "600"])
print(server.stdout.readline().strip(), server.pid, sleeper.pid, flush=True)
time.sleep(600)
"""


def test_the_reaper_ends_every_child_and_closes_their_ports_after_kill_9_of_its_parent():
    parent = subprocess.Popen([sys.executable, "-c", _PARENT], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        port, *pids = (int(x) for x in parent.stdout.readline().split())
        children = [psutil.Process(pid) for pid in pids]
        time.sleep(3)  # the reaper samples the tree every second
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        _, alive = psutil.wait_procs(children, timeout=30)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    with socket.socket() as sock, pytest.raises(OSError):
        sock.connect(("127.0.0.1", port))


# --------------------------------------------------------------------------- 6. a flaky RM must not switch Trust-GRPO off


def test_every_third_reply_unparseable_shows_as_low_coverage_and_stops_the_run_after_patience_steps():
    import numpy as np

    from sophiavl_cli.engine.rewarding import OutcomeBatch, combine, reward_metrics
    from sophiavl_cli.metrics.registry import METRICS
    from sophiavl_cli.rewards.failure_policy import FailureMonitor, RewardModelDown
    from sophiavl_cli.rewards.rm_outcome import ThinkingResult

    recipe = load_recipe(QUICKSTART)
    n, prompts = recipe.worker.rollout.n, 4
    outcome = np.array([float(i % 2) for i in range(n * prompts)])
    results = [
        ThinkingResult(score=None, failure="unparseable", attempts=1, latency_s=0.1)
        if i % 3 == 2
        else ThinkingResult(score=0.7, failure=None, attempts=1, latency_s=0.1)
        for i in range(n * prompts)
    ]
    rewards = combine(recipe, outcome, n, 1, 4, range(n * prompts), results)
    batch = OutcomeBatch(overall=outcome, format=np.ones_like(outcome), accuracy=outcome)
    metrics = reward_metrics(batch, rewards, trust_enabled=True)
    assert METRICS["trust/thinking_coverage"].reduction == "mean"
    assert metrics["trust/thinking_coverage"] == 0.0 and metrics["trust/fallback_groups"] == prompts

    monitor = FailureMonitor.from_config(recipe.reward.thinking)
    calls, failures = len(results), sum(not r.ok for r in results)
    assert failures / calls <= monitor.max_failure_fraction  # the call-failure rule alone lets it run on
    for _ in range(monitor.patience - 1):
        monitor.update(calls, failures, coverage=metrics["trust/thinking_coverage"])
    with pytest.raises(RewardModelDown, match=r"only 0% of the groups used the thinking reward"):
        monitor.update(calls, failures, coverage=metrics["trust/thinking_coverage"])
    FailureMonitor.from_config(recipe.reward.thinking).update(calls, 0, coverage=1.0)  # a healthy step


def test_the_final_summary_table_shows_thinking_coverage():
    from sophiavl_cli.metrics.keys import SUMMARY_KEYS

    assert "trust/thinking_coverage" in SUMMARY_KEYS


# --------------------------------------------------------------------------- 8. data checked and filtered in bounded memory

_BIG_ROW = """
import gc, json, sys
from pathlib import Path

import psutil

sys.path.insert(0, sys.argv[2])
from data_fixtures import sophiavl_row, write_sophiavl_set

from sophiavl_cli.config.recipe import DataConfig
from sophiavl_cli.data.check import CheckOptions, check_tables
from sophiavl_cli.data.loader import load_rows, load_tables
from sophiavl_cli.engine.prompting import PromptBuilder
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.models.resolve import resolve_model

root = Path(sys.argv[1])
text = dict(problem_type="text", solution="<answer>x</answer>", path="", data_type="text")
small, _ = write_sophiavl_set(root / "small", [sophiavl_row(problem_id=1, **text)])
rows = [sophiavl_row(problem_id=i, **text) for i in range(3)]
rows[1]["problem"] = "apple " * (int(sys.argv[3]) // 6)
big, _ = write_sophiavl_set(root / "big", rows)
options = CheckOptions(model="builtin:tiny-qwen2.5-vl", max_prompt_length=1024)
processor = VLProcessor.from_pretrained(resolve_model(options.model), min_pixels=3136, max_pixels=12544)
builder = PromptBuilder(processor, DataConfig(max_prompt_length=1024))
check_tables(load_tables(str(small)), options)  # warm: the processor and tokenizer are loaded
builder.keep_fitting(load_rows(str(small)))
gc.collect()
before = psutil.Process().memory_info().rss
# Reset the kernel's high-water mark (VmHWM) so earlier peaks (loading, warm-up) do not count.
Path("/proc/self/clear_refs").write_text("5")
report = check_tables(load_tables(str(big)), options)
kept, dropped = builder.keep_fitting(load_rows(str(big)))
status = Path("/proc/self/status").read_text()
peak = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024
print(json.dumps({"extra": peak - before, "faults": [(f.row, f.field) for f in report.faults], "kept": kept}))
"""


def test_a_huge_row_is_checked_and_dropped_in_bounded_memory(tmp_path):
    row_bytes = 20_000_000
    result = subprocess.run(
        [sys.executable, "-c", _BIG_ROW, str(tmp_path), str(Path(__file__).parent), str(row_bytes)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["faults"] == [[1, "prompt"]] and out["kept"] == [0, 2]
    assert out["extra"] < 20 * row_bytes, (
        f"checking a {row_bytes / 1e6:.0f} MB row took {out['extra'] / 1e6:.0f} MB more"
    )
