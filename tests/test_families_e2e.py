"""Every family besides Qwen2.5-VL end to end on CPU: `sophiavl train` (real Ray, FSDP2 over gloo on
2 ranks, the hf rollout, the built-in reward server running a reward model of the same family) and
an exact resume; then for Qwen3-VL LoRA, `sophiavl merge`, `sophiavl infer` and `sophiavl eval
--data builtin` on the merged folder, and a Qwen3-VL thinking reward model through `train-rm`, each
as a user runs it (a subprocess, its exit code and output).

Qwen2.5-VL's runs are in test_train_e2e.py and test_resume.py; what is checked per family below the CLI (merge
logits, packing, vLLM, FLOPs) is in the module tests named in docs/models.md.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_families import HYBRID, PATHS, QWEN25
from PIL import Image, ImageDraw

from sophiavl_cli.fileio import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
STEP_KEYS = {
    "reward/outcome",
    "reward/thinking",
    "actor/loss",
    "actor/kl",
    "actor/grad_norm",
    "perf/update_flops",
}


def _sophiavl(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "400"},
    )


def _train(out: Path, name: str, *overrides: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Two quickstart steps on builtin:NAME, its own family as the thinking reward model (Qwen3-VL:
    the shipped recipes/qwen3-vl-quickstart.yaml, which says exactly that)."""
    if name == "tiny-qwen3-vl":
        recipe, experiment, models = ROOT / "recipes" / "qwen3-vl-quickstart.yaml", "qwen3_vl_quickstart", ()
    else:
        recipe, experiment = QUICKSTART, "quickstart"
        models = (f"worker.actor.model_path=builtin:{name}", f"reward.thinking.serve_model=builtin:{name}")
    result = _sophiavl(
        "train", str(recipe), f"trainer.output_dir={out}", "trainer.max_steps=2", "trainer.val_freq=0",
        *models, *overrides,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, out / "sophiavl" / experiment


def _assert_two_trained_steps(run_dir: Path) -> None:
    steps = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "reward/outcome" in r]
    assert [r["step"] for r in steps] == [1, 2]
    for row in steps:
        assert set(row) >= STEP_KEYS, sorted(STEP_KEYS - set(row))
        assert all(
            math.isfinite(v) for k, v in row.items() if isinstance(v, float) and k != "trust/mu_correct"
        )
        assert row["rm/calls"] == 16 and row["rm/failures"] == 0  # the family's RM answered every call
        assert 0.0 <= row["reward/thinking"] <= 1.0
        assert row["actor/skipped"] == 0.0 and row["actor/grad_norm"] > 0


# Keys that measure the machine, not the run (as in test_resume.py)
MACHINE_KEYS = ("timing/", "perf/", "rm/latency", "rm/retries")


def _facts(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith(MACHINE_KEYS)}


def _merged_weights(checkpoint: Path, out: Path) -> dict:
    from safetensors.torch import load_file

    from sophiavl_cli.engine.checkpoint.merge import merge_checkpoint

    return load_file(merge_checkpoint(checkpoint, output=out, dtype="fp32").output / "model.safetensors")


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in PATHS["exact resume"] if n != QWEN25])
def test_each_family_trains_two_quickstart_steps_and_resumes_from_step_one_exactly(
    tmp_path: Path, name: str
) -> None:
    """Two steps straight (a checkpoint after each), then `--resume` from step 1's checkpoint in a
    fresh output folder: step 2 logs the same facts, dumps the same rollouts and ends with the same
    weights, bit for bit (the weights, AdamW state, data position and RNG all came back)."""
    result, run_dir = _train(
        tmp_path / "straight", name, "trainer.save_freq=1", "trainer.save_limit=-1",
        "trainer.rollout_dump_freq=1", "worker.actor.padding_free=true",
    )  # fmt: skip
    _assert_two_trained_steps(run_dir)
    said = " ".join(result.stdout.split())
    if name in HYBRID:  # hybrid layers: padded forwards, said once at start
        assert said.count("has linear-attention (Gated DeltaNet) layers") == 1
    else:  # on CPU packing needs flash-attn (the generic note), never the hybrid one
        assert "linear-attention" not in said and "worker.actor.padding_free" in said

    _, resumed_dir = _train(
        tmp_path / "resumed", name, "trainer.save_freq=1", "trainer.rollout_dump_freq=1",
        "--resume", str(run_dir / "checkpoints" / "global_step_1"),
    )  # fmt: skip
    straight = {r["step"]: r for r in read_jsonl(run_dir / "metrics.jsonl")}
    (resumed,) = read_jsonl(resumed_dir / "metrics.jsonl")
    assert resumed["step"] == 2 and _facts(resumed) == _facts(straight[2])
    step_2 = Path("rollouts") / "step_000002.jsonl"
    assert read_jsonl(resumed_dir / step_2) == read_jsonl(run_dir / step_2)
    final = Path("checkpoints") / "global_step_2"
    once = _merged_weights(run_dir / final, tmp_path / "once")
    twice = _merged_weights(resumed_dir / final, tmp_path / "twice")
    assert set(once) == set(twice) and all(torch.equal(once[k], twice[k]) for k in once)


def _image(path: Path) -> Path:
    image = Image.new("RGB", (150, 100), "white")
    ImageDraw.Draw(image).ellipse((20, 10, 90, 80), fill="red")
    image.save(path)
    return path


@pytest.mark.ray
@pytest.mark.slow
def test_qwen3_vl_trains_with_lora_and_the_merged_adapter_answers_and_evaluates(tmp_path: Path) -> None:
    """LoRA over 2 ranks (rank 1 builds the adapted model on the meta device and gets rank 0's weights;
    the KL is against the unadapted base), merged to a plain Qwen3-VL folder that infer and eval use."""
    _, run_dir = _train(tmp_path / "lora", "tiny-qwen3-vl", "trainer.save_freq=2", "worker.actor.lora.rank=8")
    _assert_two_trained_steps(run_dir)
    merged = tmp_path / "merged"
    result = _sophiavl("merge", str(run_dir / "checkpoints" / "global_step_2"), "-o", str(merged))
    assert result.returncode == 0, result.stdout + result.stderr
    config = json.loads((merged / "config.json").read_text())
    assert config["model_type"] == "qwen3_vl" and config["architectures"] == [
        "Qwen3VLForConditionalGeneration"
    ]

    result = _sophiavl(
        "infer", "--model", str(merged), "--image", str(_image(tmp_path / "circle.png")), "--type", "numerical",
        "--prompt", "How many circles?", "--max-new-tokens", "6", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["backend"] == "hf" and answer["tokens"]["completion"] == 6
    assert answer["tokens"]["image"] > 0 and isinstance(answer["response"], str)

    result = _sophiavl(
        "eval", "--bench", "MathVista", "--model", str(merged), "--data", "builtin",
        "--output-dir", str(tmp_path / "eval"), "--json", "--max-new-tokens", "8",
        "--min-pixels", "3136", "--max-pixels", "12544",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["results"][0]
    assert (report["benchmark"], report["num_samples"], report["coverage"]["percent"]) == (
        "MathVista",
        3,
        100.0,
    )


@pytest.mark.ray
@pytest.mark.slow
def test_a_qwen3_vl_thinking_reward_model_fine_tunes_merges_and_serves_scores(tmp_path: Path) -> None:
    """`sophiavl train-rm` on the tiny Qwen3-VL (2 steps), merged, then served by the hf reward server
    (what `serve-reward --backend hf` runs) to the thinking-reward client: every row gets a score."""
    from sophiavl_cli.engine.checkpoint.merge import merge_checkpoint
    from sophiavl_cli.eval.reward_model import evaluate_reward_model

    result = _sophiavl(
        "train-rm", str(ROOT / "recipes" / "thinking-rm-quickstart.yaml"), f"trainer.output_dir={tmp_path}",
        "model.model_path=builtin:tiny-qwen3-vl", "trainer.max_steps=2", "trainer.val_freq=-1",
        "trainer.val_before_train=false", "trainer.save_freq=2",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "sophiavl" / "thinking_rm_quickstart"
    rows = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "sft/loss" in r]
    assert [r["step"] for r in rows] == [1, 2]
    merged = merge_checkpoint(run_dir / "checkpoints" / "global_step_2", tmp_path / "merged").output
    assert json.loads((merged / "config.json").read_text())["model_type"] == "qwen3_vl"
    scored = evaluate_reward_model(
        str(merged), "builtin:thinking-demo@val", out_dir=tmp_path / "eval", limit=4
    )
    assert scored.quality.failures == 0 and scored.quality.scored == 4
