"""`reward.thinking.serve`: the reward model as a Ray actor for the run, restarted when it dies.

The end-to-end test runs `sophiavl train recipes/quickstart.yaml` with the served model on the hf
backend (CPU), kills the server process after the first step, and checks that the run restarts it,
keeps scoring through it, counts the restart in `rm/serve_restarts`, and stops it at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from sophiavl_cli.config.loading import load_recipe
from sophiavl_cli.engine.reward_model.served import RECORD_FILE, ServedThinkingService, thinking_service
from sophiavl_cli.engine.reward_model.service import ThinkingService
from sophiavl_cli.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
SERVE = (
    "reward.thinking.serve_model=null",  # the quickstart's built-in server, replaced by the actor
    "reward.thinking.serve.model=builtin:tiny-qwen2.5-vl",
    "reward.thinking.serve.backend=hf",
    "reward.thinking.serve.gpus=0",
    "reward.thinking.serve.health_interval=0.5",
)


def test_an_explicit_endpoint_wins_over_serve_and_vllm_needs_matching_parallelism() -> None:
    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", list(SERVE))
    with ExitStack() as stack:
        assert isinstance(thinking_service(recipe.reward.thinking, stack, env={}), ServedThinkingService)
        external = thinking_service(recipe.reward.thinking, stack, env={"OPENAI_API_URL": "http://h:1/v1"})
        assert isinstance(external, ThinkingService) and not external.embedded
    with pytest.raises(UserError, match=r"tensor_parallel_size .* must equal"):
        load_recipe(None, ["reward.thinking.serve.model=m", "reward.thinking.serve.tensor_parallel_size=2"])
    with pytest.raises(UserError, match="keep one"):
        load_recipe(ROOT / "recipes" / "quickstart.yaml", ["reward.thinking.serve.model=m"])
    fullsets = load_recipe(ROOT / "recipes" / "fullsets.yaml")
    assert fullsets.reward.thinking.serve is not None and fullsets.reward.thinking.serve.backend == "vllm"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.ray
@pytest.mark.slow
def test_training_serves_the_rm_in_the_cluster_and_survives_its_death(tmp_path: Path) -> None:
    run_dir = tmp_path / "sophiavl" / "quickstart"
    command = [
        sys.executable, "-m", "sophiavl_cli", "train", str(ROOT / "recipes" / "quickstart.yaml"),
        f"trainer.output_dir={tmp_path}", "trainer.max_steps=4", "trainer.val_freq=-1", "trainer.save_freq=-1",
        # Calls in flight while the server restarts back off and retry (a loaded 2-core machine takes
        # tens of seconds to start it again); the run must not give up on the RM meanwhile.
        "reward.thinking.max_retries=12", "reward.thinking.failure_patience=10",
        *SERVE,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_URL"}
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    killed = None
    try:
        deadline = time.monotonic() + 600
        while killed is None and process.poll() is None and time.monotonic() < deadline:
            metrics = run_dir / "metrics.jsonl"
            record = run_dir / RECORD_FILE
            if metrics.is_file() and metrics.read_text().strip() and record.is_file():
                killed = json.loads(record.read_text())["pid"]
                os.kill(killed, signal.SIGKILL)  # the served reward model dies mid-run
            time.sleep(0.2)
        output, _ = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            process.kill()
    assert killed is not None, "the run ended before its first step was logged:\n" + output[-4000:]
    assert process.returncode == 0, output[-4000:]
    record = json.loads((run_dir / RECORD_FILE).read_text())
    assert record["restarts"] == 1 and record["pid"] != killed
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["rm/serve_restarts"] == 1
    assert rows[0]["rm/serve_restarts"] == 0
    assert rows[-1]["rm/calls"] > 0 and rows[-1]["rm/failures"] == 0  # scored through the restarted server
    assert "reward/thinking" in rows[-1]
    assert not _alive(record["pid"])  # stopped at the end
