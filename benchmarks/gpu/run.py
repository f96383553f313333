"""GPU training benchmark: a Qwen2.5-VL-3B-sized random model, a few `sophiavl train` steps per backend.

Weights cannot be downloaded on the benchmark machines, and throughput does not depend on weight
values, so the model is built from the public config.json numbers of Qwen2.5-VL-3B-Instruct
(language: hidden 2048, 36 layers, 16 heads, 2 KV heads, MLP 11008, vocab 151936, tied
embeddings, mrope sections 16/24/24; vision: depth 32, hidden 1280, MLP 3420, 16 heads, output
2048, full attention in blocks 7/15/23/31) with random weights, next to the tokenizer and
processor files of `builtin:tiny-qwen2.5-vl-realvocab` (the real Qwen2.5 vocabulary and special
token ids). A random model rarely emits EOS, so responses run to `--response-length`: every step
generates and trains on the same number of tokens, which is what a throughput figure wants.

Each backend trains `--steps` steps on the built-in demo data (Trust-GRPO's thinking reward off:
no reward server; KL on, so the reference pass runs); the first step is warm-up (CUDA graphs,
allocator, vLLM start) and is left out of the averages when more than one ran. Printed per
backend, from the run's metrics.jsonl: tokens/s/GPU over the whole step (EasyR1's figure),
trained tokens/s/GPU and MFU of the update, generated tokens/s/GPU, seconds per phase, and the
peak GPU memory seen by `nvidia-smi` (polled every 0.5 s: vLLM's reserved KV cache included).
A JSON summary goes to OUT/summary.json for docs/benchmarks.md. Each run's final checkpoint
(~40 GB for 3B with AdamW states) is deleted after the run to keep the disk free.

Usage (GPU machine, from the checkout; no network needed):
    python benchmarks/gpu/run.py                        # hf and vllm, all visible GPUs, 3 steps
    python benchmarks/gpu/run.py --backends vllm --steps 5 --prompts 32 --n 8 --response-length 1024
    python benchmarks/gpu/run.py --backends vllm -- worker.actor.max_tokens_per_micro_batch=32768
    SOPHIAVL_PEAK_FLOPS=989e12 python benchmarks/gpu/run.py   # a GPU missing from the peak table
    python benchmarks/gpu/run.py --smoke                # CPU: tiny shape, 1 step, hf (the test)

Arguments after `--` are passed to `sophiavl train` as recipe overrides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

# Public config.json numbers of Qwen2.5-VL-3B-Instruct (the language part sits at the top level).
QWEN25_VL_3B = {
    "hidden_size": 2048,
    "intermediate_size": 11008,
    "num_hidden_layers": 36,
    "num_attention_heads": 16,
    "num_key_value_heads": 2,
    "max_window_layers": 70,
    "max_position_embeddings": 128000,
    "sliding_window": 32768,
    "tie_word_embeddings": True,
    "vocab_size": 151936,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {
        "depth": 32,
        "hidden_size": 1280,
        "intermediate_size": 3420,
        "num_heads": 16,
        "out_hidden_size": 2048,
        "fullatt_block_indexes": [7, 15, 23, 31],
    },
}
SMOKE_SHAPE: dict[str, Any] = {}  # the realvocab builtin's own tiny numbers (hidden 64, 2 layers)
PHASES = ("gen", "reward", "old", "ref", "adv", "update", "sync", "step")
RATES = {
    "tokens/s/GPU": "perf/tokens_per_s_per_worker",
    "update tokens/s/GPU": "perf/update_tokens_per_s_per_worker",
    "gen tokens/s/GPU": "perf/gen_tokens_per_s_per_worker",
    "MFU (update)": "perf/mfu",
}


def shaped_config(config: dict[str, Any], shape: dict[str, Any]) -> dict[str, Any]:
    """`config` (released layout: language keys at the top) with `shape`'s numbers put in."""
    vision = {**config["vision_config"], **shape.get("vision_config", {})}
    return {**config, **{k: v for k, v in shape.items() if k != "vision_config"}, "vision_config": vision}


def build_model(out_dir: Path, shape: dict[str, Any], device: str) -> Path:
    """A random model of `shape` beside the realvocab builtin's tokenizer/processor files."""
    import torch
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from sophiavl_cli.models.resolve import resolve_model

    if (out_dir / "model.safetensors.index.json").is_file() or (out_dir / "model.safetensors").is_file():
        return out_dir  # built by an earlier run
    source = resolve_model("builtin:tiny-qwen2.5-vl-realvocab")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.safetensors.index.json"))
    config = shaped_config(json.loads((tmp / "config.json").read_text()), shape)
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(AutoConfig.from_pretrained(tmp), dtype=dtype)
    model.save_pretrained(tmp)
    del model
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return out_dir


class MemoryPoller:
    """Peak `memory.used` over all GPUs from nvidia-smi, polled in a thread (None without nvidia-smi)."""

    def __init__(self) -> None:
        self.peak_mib: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryPoller:
        if shutil.which("nvidia-smi"):
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            done = subprocess.run(
                ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
            )
            used = [float(x) for x in done.stdout.split() if x.strip()]
            if used:
                self.peak_mib = max(self.peak_mib or 0.0, *used)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def train_overrides(
    args: argparse.Namespace, model_dir: Path, backend: str, world: int, out: Path
) -> list[str]:
    per_step_prompts = args.prompts
    overrides = [
        f"trainer.output_dir={out}",
        f"trainer.experiment_name=bench_{backend}",
        f"trainer.max_steps={args.steps}",
        "trainer.total_epochs=1000",
        "trainer.val_freq=-1",
        "trainer.save_freq=-1",
        f"trainer.n_workers_per_node={world}",
        f"trainer.device={args.device}",
        "algorithm.trust.enable=false",
        f"worker.actor.model_path={model_dir}",
        f"worker.actor.dtype={'fp32' if args.device == 'cpu' else 'bf16'}",
        f"worker.actor.gradient_checkpointing={'false' if args.device == 'cpu' else 'true'}",
        f"worker.actor.global_batch_size={per_step_prompts}",
        "worker.actor.micro_batch_size_per_device_for_update=1",
        "worker.actor.micro_batch_size_per_device_for_experience=1",
        f"worker.actor.max_tokens_per_micro_batch={args.max_tokens_per_micro_batch}",
        f"worker.rollout.backend={backend}",
        f"worker.rollout.n={args.n}",
        "worker.rollout.top_p=1.0",
        f"data.rollout_batch_size={per_step_prompts}",
        f"data.max_response_length={args.response_length}",
    ]
    return overrides + list(args.overrides)


def summarize(metrics_file: Path, world: int) -> dict[str, Any]:
    """Means over the measured steps (all but the first when more than one ran)."""
    rows = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "timing/step" in r]
    measured = rows[1:] if len(rows) > 1 else rows

    def mean(key: str) -> float | None:
        values = [r[key] for r in measured if key in r]
        return sum(values) / len(values) if values else None

    return {
        "steps_measured": len(measured),
        "gpus": world,
        **{label: mean(key) for label, key in RATES.items()},
        **{f"s/{phase}": mean(f"timing/{phase}") for phase in PHASES},
    }


def run_backend(args: argparse.Namespace, model_dir: Path, backend: str, world: int) -> dict[str, Any]:
    out = Path(args.out) / "runs"
    command = [sys.executable, "-m", "sophiavl_cli", "train", str(ROOT / "recipes" / "quickstart.yaml")]
    command += train_overrides(args, model_dir, backend, world, out)
    print("$", " ".join(command), flush=True)
    start = time.perf_counter()
    with MemoryPoller() as memory:
        done = subprocess.run(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"{backend}: sophiavl train exited with {done.returncode}")
    run_dir = out / "sophiavl" / f"bench_{backend}"
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    summary = summarize(run_dir / "metrics.jsonl", world)
    summary["peak GiB/GPU (nvidia-smi)"] = None if memory.peak_mib is None else memory.peak_mib / 1024
    summary["wall_s"] = time.perf_counter() - start
    return summary


def print_table(results: dict[str, dict[str, Any]]) -> None:
    keys = list(next(iter(results.values())))
    print(f"\n{'':28}" + "".join(f"{b:>14}" for b in results))
    for key in keys:
        cells = []
        for summary in results.values():
            value = summary.get(key)
            text = "n/a" if value is None else f"{value:.3f}" if key.startswith("MFU") else f"{value:.2f}"
            cells.append(f"{text:>14}")
        print(f"{key:28}" + "".join(cells))
    if {"hf", "vllm"} <= results.keys():
        hf, vllm = results["hf"]["gen tokens/s/GPU"], results["vllm"]["gen tokens/s/GPU"]
        if hf and vllm:
            print(f"\nvLLM / hf generation throughput: {vllm / hf:.1f}x")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU check: tiny shape, 1 step, hf backend")
    parser.add_argument("--backends", default="hf,vllm", help="comma-separated: hf, vllm")
    parser.add_argument("--steps", type=int, default=3, help="training steps per backend (first is warm-up)")
    parser.add_argument("--gpus", type=int, default=None, help="workers (GPUs) to use; default all visible")
    parser.add_argument("--prompts", type=int, default=16, help="prompts per step (one optimizer step)")
    parser.add_argument("--n", type=int, default=8, help="rollouts per prompt")
    parser.add_argument("--response-length", type=int, default=512, help="data.max_response_length")
    parser.add_argument("--max-tokens-per-micro-batch", type=int, default=16384, help="token budget")
    parser.add_argument("--out", default="bench_out", help="folder for the model, runs and summary.json")
    parser.add_argument("overrides", nargs="*", help="recipe overrides for sophiavl train (after --)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.backends, args.steps, args.prompts, args.n, args.response_length = "hf", 1, 2, 2, 8
        args.max_tokens_per_micro_batch = 4096
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    args = parse_args(argv)
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    world = args.gpus or (torch.cuda.device_count() if args.device == "cuda" else 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shape = SMOKE_SHAPE if args.smoke else QWEN25_VL_3B
    model_dir = build_model(
        out / ("model_smoke" if args.smoke else "model_qwen2.5-vl-3b-random"), shape, args.device
    )
    results = {b: run_backend(args, model_dir, b, world) for b in args.backends.split(",") if b}
    (out / "summary.json").write_text(
        json.dumps({"device": args.device, "gpus": world, "results": results}, indent=1) + "\n"
    )
    print_table(results)
    return results


if __name__ == "__main__":
    main()
