"""Resume on CPU: 2 steps + resume + 2 steps is the same run as 4 steps straight, bit for bit.

Real `sophiavl train` subprocesses (fresh Ray, FSDP2 over gloo, the built-in reward server with the
thinking reward on) on the quickstart recipe. Both legs keep `trainer.max_steps=4`: the step count
sets the LR schedule and the annealing horizon. The first leg ends after step 2 with
`trainer.stop_after_steps=2` (a clean, deterministic stop with a checkpoint); the second resumes
with `--resume auto`. The runs are shared by the tests through module fixtures (4 trainings).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from sophiavl_cli.engine.checkpoint.layout import is_complete
from sophiavl_cli.engine.checkpoint.merge import merge_checkpoint
from sophiavl_cli.engine.checkpoint.store import CheckpointManager

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
RUN = Path("sophiavl") / "quickstart"  # run dir under trainer.output_dir
COMMON = ("trainer.max_steps=4", "trainer.rollout_dump_freq=1", "trainer.save_limit=-1")
# Keys that measure the machine, not the run: wall-clock phases, throughput, RM latency and retries.
MACHINE_KEYS = ("timing/", "perf/", "rm/latency", "rm/retries")


def _train(output_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "sophiavl_cli",
        "train",
        str(QUICKSTART),
        f"trainer.output_dir={output_dir}",
    ]
    result = subprocess.run(
        [*command, *COMMON, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_metrics(run_dir: Path) -> dict[int, dict]:
    rows = _jsonl(run_dir / "metrics.jsonl")
    assert len({r["step"] for r in rows}) == len(rows), "a step was logged twice"
    return {r["step"]: r for r in rows}


def _run_facts(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith(MACHINE_KEYS)}


def _rollouts(run_dir: Path, step: int) -> list[dict]:
    return _jsonl(run_dir / "rollouts" / f"step_{step:06d}.jsonl")


def _weights(checkpoint: Path, output: Path) -> dict[str, torch.Tensor]:
    merge_checkpoint(checkpoint, output=output, dtype="fp32")
    return load_file(output / "model.safetensors")


def _dcp_state(checkpoint: Path, output: Path) -> dict:
    dcp_to_torch_save(checkpoint / "dcp", output)
    return torch.load(output, weights_only=True)


def _assert_same_tree(a: object, b: object, where: str = "") -> None:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), where
        for key in a:
            _assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("straight")
    _train(out)
    return out / RUN


@pytest.fixture(scope="module")
def first_leg(tmp_path_factory) -> Path:
    """The run dir after steps 1-2 (a pristine copy: each resume below works on its own copy)."""
    out = tmp_path_factory.mktemp("first_leg")
    result = _train(out, "trainer.stop_after_steps=2")
    assert "continue: the same command again" in " ".join(result.stdout.split())
    return out / RUN


def _resume_copy(first_leg: Path, dest_root: Path, *args: str) -> Path:
    shutil.copytree(first_leg, dest_root / RUN)
    _train(dest_root, "--resume", "auto", *args)
    return dest_root / RUN


@pytest.fixture(scope="module")
def resumed(first_leg, tmp_path_factory) -> Path:
    return _resume_copy(first_leg, tmp_path_factory.mktemp("resumed"))


@pytest.fixture(scope="module")
def resumed_on_one_worker(first_leg, tmp_path_factory) -> Path:
    return _resume_copy(first_leg, tmp_path_factory.mktemp("one_worker"), "trainer.n_workers_per_node=1")


def test_the_first_leg_stops_after_two_steps_with_a_checkpoint_of_step_two(first_leg):
    assert sorted(_run_metrics(first_leg)) == [1, 2]
    manager = CheckpointManager(first_leg / "checkpoints")
    assert [p.name for p in manager.complete_checkpoints()] == ["global_step_2"]
    assert manager.find_latest() == first_leg / "checkpoints" / "global_step_2"
    state = CheckpointManager.load_driver_state(manager.find_latest())
    assert state["step"] == 2 and state["total_steps"] == 4  # the schedule still spans 4 steps


def test_two_steps_then_resume_log_the_same_metrics_and_rollouts_as_four_steps_straight(straight, resumed):
    once, twice = _run_metrics(straight), _run_metrics(resumed)
    assert sorted(once) == sorted(twice) == [1, 2, 3, 4]
    for step in once:
        assert _run_facts(twice[step]) == _run_facts(once[step]), f"step {step}"
    assert once[4]["actor/grad_norm"] > 0 and once[4]["rm/calls"] > 0  # the update and the RM really ran
    assert any("val/outcome" in once[s] for s in (2, 4))
    for step in range(1, 5):
        assert _rollouts(resumed, step) == _rollouts(straight, step), f"rollouts of step {step}"
    assert _jsonl(resumed / "generations.jsonl") == _jsonl(straight / "generations.jsonl")


def test_two_steps_then_resume_end_with_bit_identical_weights_and_optimizer_state(
    straight, resumed, tiny_model_dir, tmp_path
):
    final = "checkpoints/global_step_4"
    assert is_complete(straight / final) and is_complete(resumed / final)
    once = _weights(straight / final, tmp_path / "once")
    twice = _weights(resumed / final, tmp_path / "twice")
    assert set(once) == set(twice)
    assert all(torch.equal(once[name], twice[name]) for name in once)
    initial = load_file(tiny_model_dir / "model.safetensors")
    assert any(not torch.equal(once[name], initial[name]) for name in once)  # training moved them
    _assert_same_tree(
        _dcp_state(straight / final, tmp_path / "once.pt"), _dcp_state(resumed / final, tmp_path / "twice.pt")
    )


def test_resume_at_another_world_size_reshards_and_continues_with_finite_metrics(
    straight, resumed_on_one_worker
):
    run = resumed_on_one_worker
    assert [w["rank"] for w in json.loads((run / "workers.json").read_text())] == [0]
    final = run / "checkpoints" / "global_step_4"
    assert is_complete(final) and [p.name for p in final.glob("extra_state_rank_*.pt")] == [
        "extra_state_rank_0.pt"
    ]
    once, resharded = _run_metrics(straight), _run_metrics(run)
    assert sorted(resharded) == [1, 2, 3, 4]
    for step in (3, 4):
        assert all(
            math.isfinite(v) for k, v in resharded[step].items() if k != "trust/mu_correct" and v is not None
        )
        assert resharded[step]["actor/skipped"] == 0.0
    # Step 3 generates from the resharded step-2 weights, which DCP restores exactly; rollouts are
    # seeded per (step, prompt), not per rank: the same tokens, the same rewards.
    assert _rollouts(run, 3) == _rollouts(straight, 3)
    rewards = [k for k in once[3] if k.startswith(("reward/", "trust/", "adv/"))]
    assert {k: resharded[3][k] for k in rewards} == {k: once[3][k] for k in rewards}
    # The update sums gradients in another order at another world size: equal up to rounding.
    for key in ("actor/loss", "actor/grad_norm", "actor/kl", "actor/entropy"):
        assert resharded[3][key] == pytest.approx(once[3][key], rel=1e-2, abs=1e-6), key
