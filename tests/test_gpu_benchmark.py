"""benchmarks/gpu/run.py: the 3B shape is right, and the whole script runs on CPU with --smoke."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu" / "run.py"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_3b_shape_makes_a_qwen25_vl_config_with_three_billion_language_weights(tmp_path):
    from transformers import AutoConfig

    from sophiavl_cli.engine.observe.throughput import FlopsModel
    from sophiavl_cli.models.resolve import resolve_model

    bench = _bench()
    source = json.loads((resolve_model("builtin:tiny-qwen2.5-vl-realvocab") / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(bench.shaped_config(source, bench.QWEN25_VL_3B)))
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.vision_config.depth == 32 and config.vision_config.out_hidden_size == 2048
    assert config.image_token_id == source["image_token_id"]  # the realvocab tokenizer's ids still hold
    shape = FlopsModel.from_config(config)
    assert (shape.num_layers, shape.hidden_size, shape.head_dim, shape.num_kv_heads) == (36, 2048, 128, 2)
    assert 3.0e9 < shape.matmul_params < 3.2e9


@pytest.mark.ray
@pytest.mark.slow
def test_the_smoke_run_trains_a_step_and_reports_throughput(tmp_path, capsys):
    results = _bench().main(["--smoke", "--out", str(tmp_path)])
    hf = results["hf"]
    assert hf["steps_measured"] == 1 and hf["tokens/s/GPU"] > 0 and hf["update tokens/s/GPU"] > 0
    assert hf["s/update"] > 0 and hf["MFU (update)"] is None  # a CPU has no peak FLOP/s
    assert not (tmp_path / "runs" / "sophiavl" / "bench_hf" / "checkpoints").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["results"]["hf"]["gpus"] == 1
    assert "tokens/s/GPU" in capsys.readouterr().out
