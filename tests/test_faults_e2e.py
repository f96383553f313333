"""Faults a scheduler or a user causes to a running `sophiavl train`, end to end on CPU.

Real `sophiavl train` subprocesses on the quickstart recipe (real Ray, FSDP2 over gloo, the built-in
reward server): `kill -9` of the trainer leaves nothing behind, and SIGTERM saves a checkpoint and
exits 143 so the same command resumes without losing a finished step.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from sophiavl_cli.engine.checkpoint.integrity import verify_checkpoint
from sophiavl_cli.engine.checkpoint.store import CheckpointManager

pytestmark = [pytest.mark.ray, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
RUN = Path("sophiavl") / "quickstart"


def _command(output_dir: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "sophiavl_cli",
        "train",
        str(QUICKSTART),
        f"trainer.output_dir={output_dir}",
        *args,
    ]


def _steps(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _wait_for_step(proc: subprocess.Popen[str], run_dir: Path, step: int, timeout: float = 400) -> None:
    deadline = time.monotonic() + timeout
    while step not in _steps(run_dir):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"training did not reach step {step}:\n" + proc.communicate()[0][-3000:])
        time.sleep(0.1)  # a quickstart step takes ~0.4 s: poll well inside one


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_kill_9_of_the_trainer_ends_every_process_it_started_and_closes_the_reward_port(tmp_path):
    run_dir = tmp_path / RUN
    args = ("trainer.max_steps=50", "trainer.val_freq=-1", "trainer.save_freq=-1")
    proc = subprocess.Popen(
        _command(tmp_path, *args), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        _wait_for_step(proc, run_dir, 1)
        started = psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in started]
        server = next(c for c in commands if "sophiavl_cli.serving.hf_server" in c).split()
        port = int(server[server.index("--port") + 1])
        assert any("sophiavl_cli.engine.lifecycle.reaper" in c for c in commands)
        assert len(started) >= 4, commands  # reaper, reward server, Ray's own processes, 2 workers
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 30
        while not all(_gone(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            proc.kill()
    alive = [" ".join(p.cmdline())[:120] for p in started if not _gone(p)]
    assert not alive, f"still running 30 s after kill -9 of the trainer: {alive}"
    with socket.socket() as sock, pytest.raises(OSError):
        sock.settimeout(2)
        sock.connect(("127.0.0.1", port))


def test_sigterm_saves_the_finished_step_exits_143_and_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / RUN
    # Steps take ~0.4 s, so the signal may land a few steps after the one the test saw: max_steps
    # leaves room for that, and the interrupted run must still end before it (else nothing resumes).
    max_steps = 10
    command = _command(
        tmp_path,
        f"trainer.max_steps={max_steps}",
        "trainer.val_freq=-1",
        "trainer.save_freq=-1",
        "algorithm.trust.enable=false",
    )
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for_step(proc, run_dir, 1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, output[-3000:]
    assert "SIGTERM: finishing this step" in output
    assert "Traceback" not in output and "SIGTERM received" not in output  # no C++ dump from Ray's handler
    assert "Token authentication is enabled" not in output and "Unclosed client session" not in output
    logged = _steps(run_dir)
    checkpoint = CheckpointManager(run_dir / "checkpoints").find_latest()
    assert checkpoint is not None and checkpoint.name == f"global_step_{logged[-1]}", (logged, output[-2000:])
    assert logged == list(range(1, logged[-1] + 1)) and logged[-1] < max_steps, logged
    assert verify_checkpoint(checkpoint) is None

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from" in again.stdout
    said = "".join(again.stdout.split())  # rich wraps long paths
    assert f"resumingfrom{checkpoint}" in said, again.stdout[-2000:]
    assert _steps(run_dir) == list(range(1, max_steps + 1))


# The trainer with one fault injected: SIGTERM to itself right after the JSONL line of step 1 is
# written, i.e. after the loop decided that step needs no checkpoint.
SIGTERM_WHILE_LOGGING = """
import os, signal, sys
from sophiavl_cli.engine.observe.loggers import JsonlBackend
write = JsonlBackend.log
def log(self, step, metrics):
    write(self, step, metrics)
    if step == 1:
        os.kill(os.getpid(), signal.SIGTERM)
JsonlBackend.log = log
from sophiavl_cli.cli.app import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize(
    ("command", "recipe", "run_name"),
    [
        ("train", QUICKSTART, RUN),
        (
            "train-rm",
            ROOT / "recipes" / "thinking-rm-quickstart.yaml",
            Path("sophiavl") / "thinking_rm_quickstart",
        ),
    ],
    ids=["train", "train-rm"],
)
def test_a_sigterm_while_a_step_is_logged_still_saves_that_step(command, recipe, run_name, tmp_path):
    args = [
        command,
        str(recipe),
        f"trainer.output_dir={tmp_path}",
        "trainer.max_steps=3",
        "trainer.save_freq=-1",
    ]
    args += ["trainer.val_freq=-1", "trainer.val_before_train=false"]
    done = subprocess.run(
        [sys.executable, "-c", SIGTERM_WHILE_LOGGING, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 143, done.stdout[-3000:] + done.stderr[-3000:]
    run_dir = tmp_path / run_name
    assert _steps(run_dir) == [1]
    checkpoint = CheckpointManager(run_dir / "checkpoints").find_latest()
    assert checkpoint is not None and checkpoint.name == "global_step_1", done.stdout[-2000:]
    assert verify_checkpoint(checkpoint) is None


def test_a_step_past_stop_grace_is_abandoned_even_inside_a_blocking_ray_wait():
    import ray

    from sophiavl_cli.engine.lifecycle.signals import StopFlag, Stopped
    from sophiavl_cli.engine.parallel import cluster

    @ray.remote(num_cpus=0)
    class Slow:
        def step(self) -> str:
            time.sleep(120)  # a step that will not end within the grace
            return "finished"

    started = cluster.connect(None, num_cpus=1)
    try:
        slow = Slow.remote()
        ray.get(slow.__ray_ready__.remote())
        with pytest.raises(Stopped) as info, StopFlag(grace_s=2) as stop:
            stop.install()  # after ray.init, as the driver does
            os.kill(os.getpid(), signal.SIGTERM)
            ray.get(slow.step.remote())
        assert info.value.exit_code == 143
        ray.kill(slow)
    finally:
        cluster.disconnect(started)
