"""`sophiavl train` end to end on CPU: real Ray, real FSDP2 over gloo, real HTTP to the built-in RM.

Each run is a `sophiavl train` subprocess (a fresh Ray, signals and exit codes as a user sees
them) on the built-in tiny model and demo data, kept to a few steps.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from golden import assert_golden

from sophiavl_cli.cli.app import main
from sophiavl_cli.config import load_recipe
from sophiavl_cli.engine.checkpoint.layout import is_complete
from sophiavl_cli.engine.rollout import check_backend
from sophiavl_cli.errors import MissingExtraError, UserError
from sophiavl_cli.fileio import read_jsonl
from sophiavl_cli.metrics.registry import metric

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
VENV_BIN = Path(sys.executable).parent

# Keys every training step logs with the quickstart recipe (trust on, KL on).
STEP_KEYS = {
    "reward/outcome",
    "reward/format",
    "reward/accuracy",
    "reward/thinking",
    "reward/final",
    "trust/gamma",
    "trust/distrusted_fraction",
    "trust/weight",
    "trust/fallback_groups",
    "rm/calls",
    "rm/failures",
    "rm/latency_p50",
    "adv/abs_mean",
    "adv/zero_fraction",
    "actor/loss",
    "actor/pg_loss",
    "actor/kl",
    "actor/entropy",
    "actor/clip_fraction",
    "actor/grad_norm",
    "actor/lr",
    "actor/skipped",
    "response/length_mean",
    "response/length_max",
    "response/clip_ratio",
    "timing/gen",
    "timing/reward",
    "timing/old",
    "timing/ref",
    "timing/adv",
    "timing/update",
    "timing/sync",
    "timing/step",
    "perf/tokens_per_s",
}


def _train(tmp_path: Path, *args: str, timeout: float = 420, env: dict[str, str] | None = None):
    command = [
        sys.executable,
        "-m",
        "sophiavl_cli",
        "train",
        str(QUICKSTART),
        f"trainer.output_dir={tmp_path}",
        *args,
    ]
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def _metrics(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "metrics.jsonl")  # the run may be writing its last line


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
def test_quickstart_trains_end_to_end_with_metrics_and_a_checkpoint(tmp_path):
    secret = "sk-test-" + os.urandom(8).hex()
    result = _train(
        tmp_path,
        "trainer.max_steps=2",
        "trainer.val_freq=2",
        "trainer.save_freq=2",
        "trainer.rollout_dump_freq=2",
        env={"OPENAI_API_KEY": secret},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "sophiavl" / "quickstart"
    assert f"run dir: {run_dir}" in " ".join(result.stdout.split())

    rows = _metrics(run_dir)
    steps = [r for r in rows if "reward/outcome" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert set(row) >= STEP_KEYS, sorted(STEP_KEYS - set(row))
        assert all(
            math.isfinite(v) for k, v in row.items() if isinstance(v, float) and k != "trust/mu_correct"
        )
        assert 0.0 <= row["reward/outcome"] <= 1.0 and 0.0 <= row["reward/thinking"] <= 1.0
        assert 0.0 < row["trust/gamma"] <= 1.0
        assert 0.0 < row["trust/weight"] <= 0.3
        assert row["rm/calls"] == 16 and row["rm/failures"] == 0
        assert row["response/length_max"] <= 32
        assert row["actor/skipped"] == 0.0 and row["actor/grad_norm"] > 0
        assert row["timing/step"] >= row["timing/gen"] > 0
    assert steps[1]["trust/weight"] < steps[0]["trust/weight"]  # annealed
    assert any("val/outcome" in r for r in rows if r["step"] == 2)
    logged = {key for row in rows for key in row} - {"step"}
    assert {"timing/val", "timing/save", "timing/shard"} <= logged
    for key in logged:
        metric(key)  # every logged key is defined (with its reduction) in sophiavl_cli/metrics/keys.py

    checkpoint = run_dir / "checkpoints" / "global_step_2"
    assert is_complete(checkpoint)
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "global_step_2"
    assert (checkpoint / "huggingface" / "config.json").is_file()
    assert sorted(p.name for p in checkpoint.glob("extra_state_rank_*.pt")) == [
        "extra_state_rank_0.pt",
        "extra_state_rank_1.pt",
    ]
    saved = load_recipe(run_dir / "recipe.yaml")
    assert saved.trainer.max_steps == 2
    resolved = yaml.safe_load(
        "".join(
            line[2:] + "\n"
            for line in (run_dir / "recipe.yaml").read_text().splitlines()
            if line.startswith("#   ") or line == "# resolved:"
        )
    )["resolved"]
    assert (
        resolved["reward_endpoint"].startswith("http://127.0.0.1:")
        and resolved["reward_server"] == "built-in"
    )
    assert resolved["device"] == "cpu" and "peak_flops" in resolved
    assert (checkpoint / "recipe.yaml").read_text() == (run_dir / "recipe.yaml").read_text()
    leaked = [p for p in run_dir.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    assert not leaked and secret not in result.stdout + result.stderr
    workers = json.loads((run_dir / "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1]
    # the private Ray runs the ranks at the driver's priority, not Ray's default niceness of 15
    assert [w["niceness"] for w in workers] == [os.nice(0)] * 2
    dumped = [
        json.loads(line) for line in (run_dir / "rollouts" / "step_000002.jsonl").read_text().splitlines()
    ]
    assert [(r["prompt_index"], r["sample_index"]) for r in dumped] == [
        (p, k) for p in range(4) for k in range(4)
    ]
    assert all(0.0 <= r["thinking"] <= 1.0 and r["response"] for r in dumped)
    assert not (run_dir / "rollouts" / "step_000001.jsonl").exists()
    assert_golden(rows, may_update=True)  # the pinned numbers of the first steps (tests/golden.py)


@pytest.mark.ray
@pytest.mark.slow
def test_training_joins_a_ray_cluster_started_with_ray_start(tmp_path):
    port = _free_port()
    # Token auth (Ray's default) reads ~/.ray/auth_token, which parallel test sessions may rewrite;
    # this loopback-only cluster and its client turn it off together.
    no_auth = {"RAY_AUTH_MODE": "disabled"}
    head = subprocess.Popen(
        [str(VENV_BIN / "ray"), "start", "--head", "--port", str(port), "--num-cpus", "2",
         "--node-ip-address", "127.0.0.1", "--include-dashboard=false", "--disable-usage-stats", "--block"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env={**os.environ, **no_auth},
    )  # fmt: skip
    try:
        time.sleep(8)
        assert head.poll() is None, "ray start --head exited"
        result = _train(
            tmp_path,
            "trainer.max_steps=1",
            "trainer.val_freq=-1",
            "algorithm.trust.enable=false",
            "algorithm.kl_coef=0",
            "--ray-address",
            f"127.0.0.1:{port}",
            "--resume",
            "none",
            env=no_auth,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        rows = _metrics(tmp_path / "sophiavl" / "quickstart")
        assert [r["step"] for r in rows] == [1]
        assert "timing/ref" not in rows[0] and "trust/gamma" not in rows[0]
    finally:
        head.terminate()  # `ray start --block` stops the processes it started, and only those
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_ends_the_run_before_another_step_with_a_clear_message(tmp_path):
    run_dir = tmp_path / "sophiavl" / "quickstart"
    command = [
        sys.executable, "-m", "sophiavl_cli", "train", str(QUICKSTART), f"trainer.output_dir={tmp_path}",
        "trainer.max_steps=50", "trainer.val_freq=-1", "trainer.save_freq=-1", "algorithm.trust.enable=false",
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "metrics.jsonl").is_file() or not _metrics(run_dir):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail("training did not reach step 1:\n" + proc.communicate()[0][-3000:])
            time.sleep(0.5)
        victim = json.loads((run_dir / "workers.json").read_text())[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        steps_at_kill = len(_metrics(run_dir))
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 1, output[-3000:]
    assert "worker rank 1 died" in " ".join(output.split())
    # noticed at once: at most the step in flight finishes, never the remaining ~50
    assert len(_metrics(run_dir)) <= steps_at_kill + 1


def test_batch_sizes_that_do_not_divide_fail_before_ray_starts(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(QUICKSTART), f"trainer.output_dir={tmp_path}", "data.rollout_batch_size=6"])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "data.rollout_batch_size" in err and "worker.actor.global_batch_size" in err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()
    assert not (tmp_path / "sophiavl").exists()


def test_the_vllm_backend_without_vllm_says_which_extra_installs_it(monkeypatch):
    recipe = load_recipe(QUICKSTART, ["worker.rollout.backend=vllm"])
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM looks like to import
    with pytest.raises(MissingExtraError, match=r"pip install 'sophiavl\[gpu\]'"):
        check_backend(recipe.worker.rollout)


def test_the_hf_backend_is_always_available_and_unknown_ones_are_named():
    check_backend(load_recipe(QUICKSTART).worker.rollout)
    with pytest.raises(UserError, match=r"worker\.rollout\.backend"):
        check_backend(
            load_recipe(QUICKSTART, ["worker.rollout.backend=vllm"]).worker.rollout.model_copy(
                update={"backend": "sglang"}
            )
        )


def test_the_resolved_block_in_recipe_yaml_keeps_the_recipe_loadable_and_drops_credentials(tmp_path):
    from types import SimpleNamespace

    from sophiavl_cli.config.loading import dump_recipe
    from sophiavl_cli.engine.driver import resolved_comment, resolved_values

    client = SimpleNamespace(
        base_url="https://user:sk-secret@rm.example.com:8443/v1?token=t0k", model="judge"
    )
    values = resolved_values("cuda", 989e12, "NVIDIA H100", client, SimpleNamespace(embedded=False))
    assert values == {
        "device": "cuda",
        "device_name": "NVIDIA H100",
        "peak_flops": 989e12,
        "reward_endpoint": "https://rm.example.com:8443/v1",
        "reward_model": "judge",
        "reward_server": "external",
    }
    recipe = load_recipe(QUICKSTART)
    path = tmp_path / "recipe.yaml"
    path.write_text(dump_recipe(recipe) + resolved_comment(values))
    assert load_recipe(path) == recipe
    assert "sk-secret" not in path.read_text() and "t0k" not in path.read_text()
