"""benchmarks/gpu/device_check.py: the whole check runs on CPU with --smoke, without Ray or vLLM importable."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu" / "device_check.py"
BLOCKED = "ray", "vllm"  # absent from the device image


def _module():
    spec = importlib.util.spec_from_file_location("device_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_smoke_run_passes_part_a_and_measures_part_b_with_ray_and_vllm_unimportable(tmp_path):
    blocker = (
        "import runpy, sys\n"
        f"for name in {BLOCKED!r}: sys.modules[name] = None  # import raises ImportError\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--smoke', '--out', {str(tmp_path)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", blocker], capture_output=True, text=True, env=env, timeout=900, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # one JSON summary
    summary = json.loads(lines[0])
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    a = summary["A"]
    assert a["ok"] and a["first_approx_kl"] < 1e-3 and a["dcp_weights_identical"]
    assert a["rollout_copy_max_abs_diff"] == 0.0 and a["packed_vs_padded_max_abs_diff"] < 1e-4
    runs = summary["B"]["runs"]
    assert [r["layers"] for r in runs] == [1, 2]
    assert all(r["update_tokens_per_s"] > 0 and r["update_skipped"] == 0.0 and r["mfu"] is None for r in runs)
    assert set(runs[0]["seconds"]) == {"old", "ref", "update", "sync"}
    assert {"ref", "update", "sync"} <= set(runs[0]["planned_peak_bytes"])  # sophiavl plan beside each phase
    assert "1 layers, update: measured - GiB, planned " in result.stderr
    c = summary["C"]
    assert c["ok"] and [r["layers"] for r in c["runs"]] == [1, 2]
    for run in c["runs"]:
        assert (
            run["left_pad_widths"][-1] == 0 and len(set(run["left_pad_widths"])) == 4
        )  # four prompt lengths
        assert run["offload_round_trip_identical"] and run["left_padded_logits_finite"]
        assert run["rollout_copy_max_abs_diff"] == 0.0 and run["step1"]["actor/approx_kl"] < 1e-3
        assert [(p["step"], p["phase"]) for p in run["phases"]] == [
            (step, phase) for step in (1, 2) for phase in ("old", "ref", "update", "sync")
        ]
    assert not list(tmp_path.glob("sophiavl-device-check-*"))  # scratch removed


def test_the_fullsets_estimate_extends_each_phase_per_layer_and_swaps_unsharded_states_for_shards():
    from sophiavl_cli.engine.observe.throughput import FlopsModel

    check = _module()
    flops = FlopsModel(
        num_layers=4,
        hidden_size=3584,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        vocab_size=152064,
    )
    base, slope = 30e9, 5e9
    measured = [(layers, {p: base + slope * layers for p in check.B_RESIDENT}) for layers in (2, 4)]
    out = check.fullsets_estimate(measured, flops, card_bytes=80e9)
    full = dataclasses.replace(flops, num_layers=28)
    params = full.decoder_params + 2 * full.head_params
    update_held = (4 + 4 + 8 + 2 + 2) * params  # policy, grads, AdamW (fp32), ref and rollout copy (bf16)
    update_shard = (4 + 4 + 8) * (params + check.VISION_7B_PARAMS) / 8
    expected = base + slope * 28 - update_held + update_shard + check.RUNTIME_OVERHEAD
    assert out["per_layer_bytes"]["update"] == pytest.approx(slope)
    assert out["fullsets_8gpu_per_phase_bytes"]["update"] == pytest.approx(expected)
    old_shard = 4 * (params + check.VISION_7B_PARAMS) / 8
    assert out["fullsets_8gpu_per_phase_bytes"]["old"] == pytest.approx(
        base + slope * 28 - (4 + 2 + 2) * params + old_shard + check.RUNTIME_OVERHEAD
    )
    sync_shard = 4 * (params + check.VISION_7B_PARAMS) / 8
    vllm_awake = 2 * (params + check.VISION_7B_PARAMS) / check.FULLSETS_TP  # its TP shard of the bf16 weights
    assert out["fullsets_8gpu_per_phase_bytes"]["sync"] == pytest.approx(
        base + slope * 28 - (4 + 8 + 2 + 2) * params + sync_shard + vllm_awake + check.RUNTIME_OVERHEAD
    )
    fits = out["fullsets_fits_80gb"]
    assert fits["generate"] is True  # 32 GB of vLLM + overhead
    assert fits["training_phases"] == (max(out["fullsets_8gpu_per_phase_bytes"].values()) < 80e9)


def test_the_fullsets_peaks_extend_linearly_to_28_layers():
    check = _module()
    measured = [(2, {"update": 10.0, "sync": 4.0}), (4, {"update": 14.0, "sync": 5.0})]
    assert check.extrapolate_peaks(measured, layers=28) == {"update": 62.0, "sync": 17.0}
