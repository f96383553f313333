"""Every signal a starting trainer can get ends with its documented exit code and a line: SIGTERM
(143) and Ctrl-C (130) while the run starts, inside `ray.init` (whose own handler exits 15
silently), and in the window after it, before the first step. Real signals sent to this process
or to a real `sophiavl train`, at points reached by a handshake, never by a sleep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sophiavl_cli.engine.lifecycle.signals import StopFlag, Stopped, take_back

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"


@pytest.mark.parametrize(
    ("signum", "code", "name"), [(signal.SIGTERM, 143, "SIGTERM"), (signal.SIGINT, 130, "Ctrl-C")]
)
def test_a_signal_while_the_run_starts_stops_at_once_with_its_exit_code_and_a_line(signum, code, name):
    with pytest.raises(Stopped) as stopped, StopFlag(grace_s=300, starting=True):
        os.kill(os.getpid(), signum)
        pytest.fail("the signal did not stop the start")  # the handler raises before this line
    assert stopped.value.exit_code == code
    assert stopped.value.message.startswith(
        f"{name} while the run was starting: stopped before its first step"
    )


def test_once_ready_the_first_sigterm_lets_the_step_finish():
    with StopFlag(grace_s=300, starting=True) as stop:
        stop.ready()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM  # no exception: the step may finish


@pytest.mark.ray
@pytest.mark.slow
def test_after_ray_init_take_back_gives_sigterm_back_to_the_runs_flag():
    """ray.init installs `sys.exit(15)` for SIGTERM (a silent exit 15); `take_back` hands it back."""
    import ray

    from sophiavl_cli.engine.parallel import cluster

    try:
        with StopFlag(starting=True) as stop:
            cluster.connect(None, num_cpus=1)
            assert signal.getsignal(signal.SIGTERM) != stop._handle  # Ray holds it now
            take_back()
            assert signal.getsignal(signal.SIGTERM) == stop._handle
            with pytest.raises(Stopped) as stopped:
                os.kill(os.getpid(), signal.SIGTERM)
                pytest.fail("the signal did not stop the start")
        assert stopped.value.exit_code == 143 and "while the run was starting" in stopped.value.message
    finally:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_a_sigterm_caught_by_rays_own_handler_still_ends_as_143_with_a_line():
    """A SIGTERM inside ray.init, after Ray took SIGTERM and before `take_back`: Ray's handler raises
    SystemExit(15), which the run's flag turns into its 143 and line."""
    import ray

    from sophiavl_cli.engine.parallel import cluster

    try:
        with pytest.raises(Stopped) as stopped, StopFlag(starting=True) as stop:
            cluster.connect(None, num_cpus=1)
            assert signal.getsignal(signal.SIGTERM) != stop._handle  # Ray holds it now
            os.kill(os.getpid(), signal.SIGTERM)  # lands in Ray's handler: SystemExit(15)
            pytest.fail("Ray's handler did not exit")
        assert stopped.value.exit_code == 143 and "while the run was starting" in stopped.value.message
    finally:
        ray.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_sigterm_right_after_starting_ray_workers_exits_143_with_a_line(tmp_path):
    """The fault as reported: SIGTERM in the second after "starting Ray workers" exited 15, silently."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sophiavl_cli", "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
        cwd=ROOT,
    )
    seen = []
    assert proc.stdout is not None
    for line in proc.stdout:  # the handshake: the trainer says it is starting the workers
        seen.append(line)
        if "starting Ray workers" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=600)
    output = "".join(seen) + rest
    assert proc.returncode == 143, output
    assert "SIGTERM while the run was starting: stopped before its first step" in " ".join(output.split())
    assert "Traceback" not in output
