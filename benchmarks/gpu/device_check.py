"""One-GPU check of the training worker, in process (no Ray, no vLLM): correctness, memory and speed.

Sized for a lent H100/H200 (a few minutes; 15 minutes of device time per session in all). The
image there has torch, transformers, numpy, safetensors, accelerate and peft, and no Ray, vLLM,
flash-attn or pydantic. Nothing here imports Ray or vLLM (the hf rollout backend stands in for
vLLM). The recipe *is* pydantic, and the worker takes a `Recipe`: rather than a second, plain-dict
recipe path that could drift from the real one, pydantic travels with the call (a ~5 MB target
folder, `pip install --target .device-deps pydantic` for the device's Python, put on PYTHONPATH);
without it the script stops with one line saying so.

A, correctness (the built-in tiny model, bf16, nccl at world size 1, gradient checkpointing and
the KL term on): two steps with finite loss and nothing skipped; the first update's
`approx_kl` < 1e-3 (on-policy); the rollout copy equals the policy after a sync; a DCP save and
load gives bit-identical weights and the same next-step loss; packed and padded log-probs agree
(sdpa) within bf16 tolerance.

B, memory and speed (a random model of Qwen2.5-VL-7B's language width: hidden 3584, MLP 18944,
28/4 heads, vocab 152064, at two reduced depths): peak GPU memory per phase (old, ref, update,
sync), update tokens/s and MFU; then the per-layer growth extrapolated to 28 layers and to
`fullsets.yaml` (8 GPUs, full shard, vLLM's 0.4 reservation) with a fits / does-not-fit verdict.

C, the run users make, at reduced depth (random weights at Qwen2.5-VL-7B's text width with 2 and 4
layers and its real vision tower: depth 32, hidden 1280, window attention, full-attention blocks
7/15/23/31): fullsets' settings at world size 1 over NCCL (bf16, gradient checkpointing, every
offload key on), four sequences with one image each at `max_pixels`, left-padded to different
prompt lengths, `--response-length` (1,024) response tokens; over two steps each phase's peak and
the free memory after it (does offload release it?), where AdamW's state and the policy rest, the
weights bit-identical after one more offload round trip, finite logits on the left-padded rows,
the first `approx_kl` < 1e-3, the rollout copy equal to the policy after the sync; each phase's
peak extrapolated to 28 layers.

Prints one JSON summary (and writes it to --out). Exit status 1 when a check of A or C fails.

Usage:
    PYTHONPATH=.device-deps python benchmarks/gpu/device_check.py             # GPU, A, B and C
    python benchmarks/gpu/device_check.py --smoke                             # CPU, tiny shapes (CI)
    python benchmarks/gpu/device_check.py --depths 2 4 --prompt-length 2048   # B's knobs
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # a checkout that is not installed (the device machine)

GIB = 2**30
CARD_BYTES = 80 * 10**9  # the card fullsets.yaml is judged against (H100 80 GB)
FULLSETS_WORLD = 8
FULLSETS_VLLM_SHARE = 0.4  # worker.rollout.gpu_memory_utilization in fullsets.yaml
RUNTIME_OVERHEAD = 3 * GIB  # CUDA context, NCCL buffers, allocator slack (a rule of thumb)
VISION_7B_PARAMS = 676e6  # Qwen2.5-VL-7B's vision tower (32 blocks of 1280 + merger); B runs a tiny one
FULLSETS_TP = 2  # worker.rollout.tensor_parallel_size in fullsets.yaml: vLLM holds half the bf16 weights
FULLSETS_MIN_PIXELS, FULLSETS_MAX_PIXELS = 262144, 4194304  # data.min_pixels / max_pixels in fullsets.yaml

# States resident on the GPU in each measured phase: B's first step (world of one, nothing offloaded;
# AdamW's state appears in the update, gradients are freed after it) and fullsets' steady state
# (every offload key on: only the phase's own model, and in the update its gradients and optimizer).
B_RESIDENT = {
    "old": ("policy_fp32", "ref_bf16", "rollout_bf16"),
    "ref": ("policy_fp32", "ref_bf16", "rollout_bf16"),
    "update": ("policy_fp32", "grads_fp32", "adam_fp32", "ref_bf16", "rollout_bf16"),
    "sync": ("policy_fp32", "adam_fp32", "ref_bf16", "rollout_bf16"),
}
FULLSETS_RESIDENT = {
    "old": ("policy_fp32",),
    "ref": ("ref_bf16",),
    "update": ("policy_fp32", "grads_fp32", "adam_fp32"),
    "sync": ("policy_fp32",),
}

QWEN25_VL_7B_TEXT: dict[str, Any] = {  # public config.json numbers of Qwen2.5-VL-7B-Instruct
    "hidden_size": 3584,
    "intermediate_size": 18944,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
    "vision_config": {"out_hidden_size": 3584},
}
VISION_7B: dict[str, Any] = {  # Qwen2.5-VL-7B-Instruct's vision tower, as released
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "out_hidden_size": 3584,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
}
SMOKE_VISION: dict[str, Any] = {  # the same layout at CPU size: window attention, two full-attention blocks
    "depth": 4,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 64,
    "window_size": 112,
    "fullatt_block_indexes": [1, 3],
}
SMOKE_TEXT: dict[str, Any] = {  # the same layout at CPU size (head_dim 16: mrope sections sum to 8)
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
    "vision_config": {"out_hidden_size": 64},
}


def _require_pydantic() -> None:
    if importlib.util.find_spec("pydantic") is None:
        raise SystemExit(
            "device_check: pydantic is missing (the recipe is a pydantic model); "
            "`pip install --target .device-deps pydantic` and run with PYTHONPATH=.device-deps"
        )


# --------------------------------------------------------------------------- the worker, in process


def _recipe(device: str, overrides: list[str]) -> Any:
    from sophiavl_cli.config import load_recipe

    return load_recipe(
        None,
        [
            "trainer.n_workers_per_node=1",
            f"trainer.device={device}",
            f"worker.actor.dtype={'bf16' if device == 'cuda' else 'fp32'}",
            "worker.actor.gradient_checkpointing=true",
            "algorithm.use_kl_loss=true",
            "algorithm.kl_coef=0.04",
            "worker.rollout.backend=hf",
            "worker.rollout.top_p=1.0",
            "worker.actor.padding_free=false",
            *overrides,
        ],
    )


def _worker(recipe: Any, model_dir: Path, device: str) -> Any:
    import socket

    from sophiavl_cli.engine.workers.train_worker import TrainWorker, WorkerSpec

    with socket.socket() as sock:  # a world of one: nobody else races for this port
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    worker = TrainWorker(0, 1, {}, os.cpu_count() or 1)
    spec = WorkerSpec(
        recipe=recipe,
        model_dir=str(model_dir),
        master_addr="127.0.0.1",
        master_port=port,
        device=device,
        optimizer_steps_total=100,
        need_ref=True,
        eos_token_ids=[-1],  # never sampled: every response runs to max_tokens (fixed work per step)
        pad_token_id=0,
        collective_timeout_s=300,
    )
    worker.setup(spec)
    return worker


def _train_step(worker: Any, sequences: list[Any], advantages: list[float]) -> dict[str, float]:
    worker.set_sequences(sequences)
    worker.compute_old_logprobs()
    worker.compute_ref_logprobs()
    return worker.update(advantages, num_updates=1)


def _rollout_step(worker: Any, prompts: list[Any], n: int, seed: int, max_tokens: int) -> dict[str, float]:
    import numpy as np

    from sophiavl_cli.engine.rollout import SamplingParams
    from sophiavl_cli.engine.workers.batching import TrainSequence

    outputs = worker.generate(prompts, n, SamplingParams(max_tokens=max_tokens), seed)
    sequences = [
        TrainSequence(i, prompts[o.prompt_index].prompt_ids, o.response_ids, None, None)
        for i, o in enumerate(outputs)
    ]
    advantages = np.random.default_rng(seed).standard_normal(len(sequences)).tolist()
    return _train_step(worker, sequences, advantages)


def _weights(worker: Any) -> dict[str, Any]:
    from sophiavl_cli.engine.parallel.fsdp import full_tensors

    return {name: tensor.detach().to("cpu", copy=True) for name, tensor in full_tensors(worker.policy)}


# --------------------------------------------------------------------------- A: correctness


def part_a(device: str, work: Path) -> dict[str, Any]:
    import torch

    from sophiavl_cli.algo.losses import token_logprobs
    from sophiavl_cli.engine.parallel.fsdp import full_tensors
    from sophiavl_cli.engine.rollout import RolloutPrompt
    from sophiavl_cli.engine.workers.batching import TrainSequence, micro_batches
    from sophiavl_cli.engine.workers.forward import ResponseForward, response_tokens
    from sophiavl_cli.metrics.keys import ACTOR_APPROX_KL, ACTOR_LOSS, ACTOR_SKIPPED
    from sophiavl_cli.models.resolve import resolve_model

    model_dir = resolve_model("builtin:tiny-qwen2.5-vl")
    recipe = _recipe(
        device,
        [
            "data.rollout_batch_size=2",
            "worker.actor.global_batch_size=2",
            "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=4",
            "worker.actor.micro_batch_size_per_device_for_experience=4",
            "worker.actor.optim.lr=1e-4",
        ],
    )
    worker = _worker(recipe, model_dir, device)
    prompts = [RolloutPrompt(index=i, prompt_ids=list(range(10 + i, 30 + 2 * i))) for i in range(2)]
    checks: dict[str, Any] = {}
    try:
        steps = [_rollout_step(worker, prompts, 4, seed, 12) for seed in (1, 2)]
        for k, metrics in enumerate(steps, start=1):
            worker.sync_weights()
            checks[f"step{k}_loss"] = metrics[ACTOR_LOSS]
            checks[f"step{k}_skipped"] = metrics[ACTOR_SKIPPED]
        checks["first_approx_kl"] = steps[0][ACTOR_APPROX_KL]

        copy = dict(worker.rollout.model.named_parameters())
        checks["rollout_copy_max_abs_diff"] = max(
            float((copy[name] - tensor.to(copy[name].dtype)).abs().max())
            for name, tensor in full_tensors(worker.policy)
        )

        # DCP: save, train a step on fixed sequences, load, train the same step again
        fixed = [
            TrainSequence(i, prompts[i % 2].prompt_ids, [40 + i, 41, 42, 43 + i], None, None)
            for i in range(8)
        ]
        advantages = [1.0, -1.0, 0.5, -0.5, 0.25, -0.25, 0.75, -0.75]
        step_dir = work / "checkpoint"
        worker.save_checkpoint(str(step_dir))
        saved = _weights(worker)
        loss_after_save = _train_step(worker, fixed, advantages)[ACTOR_LOSS]
        worker.load_checkpoint(str(step_dir), 2, 2)
        loaded = _weights(worker)
        checks["dcp_weights_identical"] = saved.keys() == loaded.keys() and all(
            torch.equal(saved[n], loaded[n]) for n in saved
        )
        loss_after_load = _train_step(worker, fixed, advantages)[ACTOR_LOSS]
        checks["dcp_next_loss_diff"] = abs(loss_after_load - loss_after_save)

        # packed (per-sequence positions, block-diagonal mask under sdpa) vs padded log-probs
        mb = micro_batches(fixed, 8, 0)[0]
        tokens = response_tokens(mb, worker.device)
        mask = torch.tensor(mb.response_mask, device=worker.device).bool()
        worker.policy.eval()
        with torch.no_grad():
            padded = token_logprobs(
                ResponseForward(worker.policy.config, worker.device).logits(worker.policy, mb), tokens
            )
            packed = token_logprobs(
                ResponseForward(worker.policy.config, worker.device, packed=True).logits(worker.policy, mb),
                tokens,
            )
        checks["packed_vs_padded_max_abs_diff"] = float((padded - packed)[mask].abs().max())
    finally:
        worker.shutdown()

    bf16 = device == "cuda"
    checks["ok"] = bool(
        all(math.isfinite(checks[f"step{k}_loss"]) and checks[f"step{k}_skipped"] == 0.0 for k in (1, 2))
        and checks["first_approx_kl"] < 1e-3
        and checks["rollout_copy_max_abs_diff"] == 0.0
        and checks["dcp_weights_identical"]
        and checks["dcp_next_loss_diff"] <= (1e-6 if not bf16 else 1e-4)
        and checks["packed_vs_padded_max_abs_diff"] <= (5e-2 if bf16 else 1e-4)
    )
    return checks


# --------------------------------------------------------------------------- B: memory and speed


def _shaped_model(work: Path, shape: dict[str, Any], layers: int, device: str) -> Path:
    spec = importlib.util.spec_from_file_location("gpu_run", Path(__file__).with_name("run.py"))
    run = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(run)  # type: ignore[union-attr]
    full = {**shape, "num_hidden_layers": layers, "max_window_layers": layers}
    return run.build_model(work / f"model-{layers}", full, device)


def _state_bytes(flops: Any, vision_params: float) -> dict[str, float]:
    """Analytic resident bytes of the states at world size 1: fp32 policy + grads + AdamW, bf16 ref and rollout copy."""
    text = flops.decoder_params + 2 * flops.head_params  # + the embedding (untied)
    params = text + vision_params
    return {
        "policy_fp32": 4 * params,
        "grads_fp32": 4 * params,
        "adam_fp32": 8 * params,
        "ref_bf16": 2 * params,
        "rollout_bf16": 2 * params,
    }


def _measure_depth(device: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from sophiavl_cli.engine.observe.throughput import FlopsModel, peak_flops
    from sophiavl_cli.engine.workers.batching import TrainSequence
    from sophiavl_cli.metrics.keys import ACTOR_LOSS, ACTOR_SKIPPED

    rows = 2 * args.micro_batch
    recipe = _recipe(
        device,
        [
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            f"worker.rollout.n={rows}",
            f"worker.actor.micro_batch_size_per_device_for_update={args.micro_batch}",
            f"worker.actor.micro_batch_size_per_device_for_experience={args.micro_batch}",
            f"data.max_prompt_length={args.prompt_length}",
            f"data.max_response_length={args.response_length}",
            "worker.actor.optim.lr=1e-6",
        ],
    )
    worker = _worker(recipe, model_dir, device)
    config = worker.policy.config
    rng = np.random.default_rng(0)
    vocab = int(config.text_config.vocab_size if hasattr(config, "text_config") else config.vocab_size)
    sequences = [
        TrainSequence(
            i,
            rng.integers(100, vocab - 100, args.prompt_length).tolist(),
            rng.integers(100, vocab - 100, args.response_length).tolist(),
            None,
            None,
        )
        for i in range(rows)
    ]
    cuda = device == "cuda"
    peaks: dict[str, float | None] = {}
    seconds: dict[str, float] = {}

    def phase(name: str, fn: Any) -> Any:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds[name] = time.perf_counter() - start
        peaks[name] = float(torch.cuda.max_memory_allocated()) if cuda else None
        return out

    try:
        worker.set_sequences(sequences)
        phase("old", worker.compute_old_logprobs)
        phase("ref", worker.compute_ref_logprobs)
        advantages = rng.standard_normal(rows).tolist()
        metrics = phase("update", lambda: worker.update(advantages, num_updates=1))
        phase("sync", worker.sync_weights)
    finally:
        worker.shutdown()
    flops_model = FlopsModel.from_config(config)
    planned = planned_phases(
        recipe, model_dir, torch.cuda.get_device_properties(0).total_memory if cuda else 0
    )
    for name, measured in peaks.items():  # the planner's prediction beside each measured phase
        print(
            f"{flops_model.num_layers} layers, {name}: measured {_gib(measured)} GiB, "
            f"planned {_gib(planned.get(name))} GiB",
            file=sys.stderr,
        )
    pairs = [(s.num_tokens, len(s.response_ids)) for s in sequences]
    tokens = sum(total for total, _ in pairs)
    peak = peak_flops(torch.cuda.get_device_name() if cuda else "cpu", os.environ.get("SOPHIAVL_PEAK_FLOPS"))
    update_flops = flops_model.training_flops(pairs)
    return {
        "layers": flops_model.num_layers,
        "peak_bytes": peaks,
        "seconds": seconds,
        "update_tokens_per_s": tokens / seconds["update"],
        "mfu": update_flops / (seconds["update"] * peak) if peak else None,
        "planned_peak_bytes": planned,
        "update_skipped": metrics[ACTOR_SKIPPED],
        "update_loss": metrics[ACTOR_LOSS],
        "_flops": flops_model,
    }


def planned_phases(recipe: Any, model_dir: Path, total_bytes: int) -> dict[str, float]:
    """`sophiavl plan`'s per-phase bytes for this very run (sdpa: no flash-attn on the device image)."""
    from sophiavl_cli.plan import architecture_of
    from sophiavl_cli.plan.gpus import Gpu
    from sophiavl_cli.plan.memory import plan_run

    plan = plan_run(recipe, architecture_of(str(model_dir)), Gpu("device", total_bytes), attention="sdpa")
    return {phase.name: float(phase.total) for phase in plan.phases}


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def part_b(device: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    shape = SMOKE_TEXT if args.smoke else QWEN25_VL_7B_TEXT
    runs = []
    for layers in args.depths:
        model_dir = _shaped_model(work, shape, layers, device)
        runs.append(_measure_depth(device, model_dir, args))
        shutil.rmtree(model_dir, ignore_errors=True)  # tens of GB at 7B width
    out: dict[str, Any] = {
        "workload": {k: getattr(args, k) for k in ("micro_batch", "prompt_length", "response_length")}
    }
    out["runs"] = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
    if device == "cuda" and len(runs) >= 2:
        out |= fullsets_estimate(
            [(r["layers"], r["peak_bytes"]) for r in runs], runs[-1]["_flops"], card_bytes=CARD_BYTES
        )
    return out


def fullsets_estimate(
    measured: list[tuple[int, dict[str, float]]], flops: Any, *, card_bytes: float, layers: int = 28
) -> dict[str, Any]:
    """Per-phase peak bytes of one GPU in `fullsets.yaml`, from world-of-one peaks at two or more depths.

    Each phase's peak grows linearly with depth (states and checkpointed activations per layer);
    the slope between the shallowest and deepest run extends it to `layers`. Then the analytic
    state bytes B held unsharded in that phase (`B_RESIDENT`, its hf rollout copy included) are
    replaced by the 8-way shards fullsets keeps on the GPU then (`FULLSETS_RESIDENT`, with the 7B
    vision tower); activations are per rank and stay. vLLM's weights rest in host memory while
    it sleeps through old, ref and update; in the sync they are awake (its tensor-parallel shard
    of the bf16 weights) while the policy's full tensors stream in.
    """
    (low_layers, low), (high_layers, high) = measured[0], measured[-1]
    per_layer = {name: (high[name] - low[name]) / (high_layers - low_layers) for name in high}
    at_full = {name: high[name] + per_layer[name] * (layers - high_layers) for name in high}
    full = dataclasses.replace(flops, num_layers=layers)
    held = _state_bytes(full, 0.0)  # B's vision tower is tiny
    fullsets = _state_bytes(full, VISION_7B_PARAMS)
    per_gpu = {
        name: at_full[name]
        - sum(held[k] for k in B_RESIDENT[name])
        + sum(fullsets[k] for k in FULLSETS_RESIDENT[name]) / FULLSETS_WORLD
        + RUNTIME_OVERHEAD
        for name in at_full
    }
    # in the sync vLLM's weights are awake (its KV cache still asleep): its TP shard of the bf16 weights
    per_gpu["sync"] += fullsets["rollout_bf16"] / FULLSETS_TP
    vllm_awake = FULLSETS_VLLM_SHARE * card_bytes
    worst = max(per_gpu.values())
    return {
        "per_layer_bytes": per_layer,
        f"extrapolated_{layers}_layers_world1_bytes": at_full,
        "fullsets_8gpu_per_phase_bytes": per_gpu,
        "fullsets_fits_80gb": {
            "training_phases": worst < card_bytes,  # vLLM asleep: KV cache freed, weights in host memory
            "generate": vllm_awake + RUNTIME_OVERHEAD < card_bytes,  # offload on: all states in host memory
            "training_phases_if_vllm_stayed_awake": worst + vllm_awake < card_bytes,
        },
    }


# --------------------------------------------------------------------------- C: the fullsets run, shallow


def _image_sequences(model_dir: Path, args: argparse.Namespace, count: int) -> list[Any]:
    """`count` sequences, each one random image at `max_pixels` and a prompt of its own length (so
    micro-batches left-pad them), with `response_length` random response tokens."""
    import numpy as np
    from PIL import Image

    from sophiavl_cli.engine.workers.batching import TrainSequence
    from sophiavl_cli.models.processing import VLProcessor

    processor = VLProcessor.from_pretrained(
        model_dir, min_pixels=min(args.max_pixels, FULLSETS_MIN_PIXELS), max_pixels=args.max_pixels
    )
    rng = np.random.default_rng(0)
    side = int(math.sqrt(args.max_pixels))
    vocab = len(processor.tokenizer)
    sequences = []
    for i in range(count):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        words = " ".join(["look"] * (8 + 24 * i))  # prompt lengths differ by 24+ tokens
        text = f"<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{words}<|im_end|>\n<|im_start|>assistant\n"
        encoded = processor.encode(text, [image])
        response = rng.integers(100, min(vocab, 150000), args.response_length).tolist()
        sequences.append(
            TrainSequence(i, list(encoded.input_ids), response, encoded.pixel_values, encoded.image_grid_thw)
        )
    return sequences


def _fullsets_depth(device: str, model_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Two steps of fullsets' settings (bf16, checkpointing, every offload key) on four image sequences."""
    import numpy as np
    import torch

    from sophiavl_cli.engine.parallel.fsdp import full_tensors
    from sophiavl_cli.engine.workers.batching import micro_batches
    from sophiavl_cli.engine.workers.forward import ResponseForward
    from sophiavl_cli.metrics.keys import ACTOR_APPROX_KL, ACTOR_LOSS, ACTOR_SKIPPED

    sequences = _image_sequences(model_dir, args, 4)
    longest = max(len(s.prompt_ids) for s in sequences)
    recipe = _recipe(
        device,
        [
            "data.rollout_batch_size=1",
            "worker.actor.global_batch_size=1",
            "worker.rollout.n=4",
            "worker.actor.micro_batch_size_per_device_for_update=4",
            "worker.actor.micro_batch_size_per_device_for_experience=4",
            f"data.max_prompt_length={longest}",
            f"data.max_response_length={args.response_length}",
            f"data.min_pixels={min(args.max_pixels, FULLSETS_MIN_PIXELS)}",
            f"data.max_pixels={args.max_pixels}",
            "worker.actor.fsdp.offload_params=true",
            "worker.actor.fsdp.offload_optimizer=true",
            "worker.ref.offload=true",
            "worker.actor.optim.lr=1e-6",
        ],
    )
    worker = _worker(recipe, model_dir, device)
    cuda = device == "cuda"
    phases: list[dict[str, Any]] = []

    def phase(step: int, name: str, fn: Any) -> Any:
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        phases.append(
            {
                "step": step,
                "phase": name,
                "seconds": time.perf_counter() - start,
                "peak_bytes": float(torch.cuda.max_memory_allocated()) if cuda else None,
                "free_bytes_after": float(torch.cuda.mem_get_info()[0])
                if cuda
                else None,  # offload released?
                "allocated_bytes_after": float(torch.cuda.memory_allocated()) if cuda else None,
            }
        )
        return out

    out: dict[str, Any] = {"prompt_lengths": [len(s.prompt_ids) for s in sequences]}
    try:
        rng = np.random.default_rng(1)
        for step in (1, 2):
            worker.set_sequences(sequences)
            phase(step, "old", worker.compute_old_logprobs)
            phase(step, "ref", worker.compute_ref_logprobs)
            advantages = rng.standard_normal(len(sequences)).tolist()
            metrics = phase(step, "update", lambda a=advantages: worker.update(a, num_updates=1))
            phase(step, "sync", worker.sync_weights)
            out[f"step{step}"] = {k: metrics[k] for k in (ACTOR_LOSS, ACTOR_APPROX_KL, ACTOR_SKIPPED)}
        states = [
            t for state in worker.optimizer.state.values() for t in state.values() if torch.is_tensor(t)
        ]
        out["optimizer_state_devices"] = sorted({str(t.device) for t in states if t.dim() > 0})
        out["policy_devices_between_phases"] = sorted({str(p.device) for p in worker.policy.parameters()})

        before = _weights(worker)
        with worker.offload.on_device(worker.policy):  # one more round trip to the GPU and back
            pass
        after = _weights(worker)
        out["offload_round_trip_identical"] = before.keys() == after.keys() and all(
            torch.equal(before[n], after[n]) for n in before
        )
        with worker.offload.on_device(worker.policy):
            copy = dict(worker.rollout.model.named_parameters())
            out["rollout_copy_max_abs_diff"] = max(
                float((copy[name] - tensor.to(copy[name].dtype)).abs().max())
                for name, tensor in full_tensors(worker.policy)
            )
            mb = micro_batches(sequences, len(sequences), 0)[0]  # left-padded to the longest prompt
            worker.policy.eval()
            with torch.no_grad():
                logits = ResponseForward(worker.policy.config, worker.device).logits(worker.policy, mb)
            mask = torch.tensor(mb.response_mask, device=logits.device).bool()
            out["left_padded_logits_finite"] = bool(torch.isfinite(logits[mask]).all())
            out["left_pad_widths"] = [int(mb.prompt_width - len(s.prompt_ids)) for s in sequences]
        config = worker.policy.config
        out["layers"] = int(getattr(config, "text_config", config).num_hidden_layers)
    finally:
        worker.shutdown()
    out["phases"] = phases
    return out


def part_c(device: str, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """fullsets' settings at reduced depth with the real 7B vision tower, extrapolated to 28 layers."""
    from sophiavl_cli.metrics.keys import ACTOR_APPROX_KL, ACTOR_LOSS, ACTOR_SKIPPED

    text, vision = (SMOKE_TEXT, SMOKE_VISION) if args.smoke else (QWEN25_VL_7B_TEXT, VISION_7B)
    runs = []
    for layers in args.depths:
        model_dir = _shaped_model(
            work, {**text, "vision_config": {**text["vision_config"], **vision}}, layers, device
        )
        runs.append(_fullsets_depth(device, model_dir, args))
        shutil.rmtree(model_dir, ignore_errors=True)
    out: dict[str, Any] = {
        "max_pixels": args.max_pixels,
        "response_length": args.response_length,
        "runs": runs,
    }
    checks = [
        math.isfinite(r[f"step{k}"][ACTOR_LOSS]) and r[f"step{k}"][ACTOR_SKIPPED] == 0.0
        for r in runs
        for k in (1, 2)
    ]
    checks += [r["step1"][ACTOR_APPROX_KL] < 1e-3 for r in runs]
    checks += [r["offload_round_trip_identical"] and r["left_padded_logits_finite"] for r in runs]
    checks += [r["rollout_copy_max_abs_diff"] == 0.0 for r in runs]
    if device == "cuda":  # every offload key on: AdamW's state and the policy rest in host memory
        checks += [r["optimizer_state_devices"] == ["cpu"] for r in runs]
        checks += [r["policy_devices_between_phases"] == ["cpu"] for r in runs]
    out["ok"] = all(checks)
    if device == "cuda" and len(runs) >= 2:
        out["extrapolated_28_layers_peak_bytes"] = extrapolate_peaks(
            [(r["layers"], _step_peaks(r["phases"], 2)) for r in runs], layers=28
        )
    return out


def _step_peaks(phases: list[dict[str, Any]], step: int) -> dict[str, float]:
    return {p["phase"]: p["peak_bytes"] for p in phases if p["step"] == step}


def extrapolate_peaks(measured: list[tuple[int, dict[str, float]]], *, layers: int) -> dict[str, float]:
    """Each phase's peak, extended linearly in depth from the shallowest and deepest run to `layers`."""
    (low_layers, low), (high_layers, high) = measured[0], measured[-1]
    return {
        name: high[name] + (high[name] - low[name]) / (high_layers - low_layers) * (layers - high_layers)
        for name in high
    }


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the CI test")
    parser.add_argument("--parts", default="ABC", help="any of A, B, C")
    parser.add_argument(
        "--max-pixels", type=int, default=FULLSETS_MAX_PIXELS, help="C's image size (fullsets)"
    )
    parser.add_argument(
        "--depths", type=int, nargs="+", default=None, help="B's reduced depths (two or more)"
    )
    parser.add_argument("--micro-batch", type=int, default=4, help="sequences per micro-batch (fullsets: 4)")
    parser.add_argument("--prompt-length", type=int, default=1024)
    parser.add_argument("--response-length", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=None, help="folder for summary.json and scratch files")
    args = parser.parse_args(argv)
    _require_pydantic()
    import torch

    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    if args.smoke:
        args.depths = args.depths or [1, 2]
        args.micro_batch, args.prompt_length, args.response_length = 2, 24, 8
        args.max_pixels = 56 * 56
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.depths = args.depths or [2, 4]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="sophiavl-device-check-", dir=args.out))
    summary: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch": torch.__version__,
        "smoke": args.smoke,
    }
    started = time.perf_counter()
    try:
        if "A" in args.parts:
            summary["A"] = part_a(device, work)
        if "B" in args.parts:
            summary["B"] = part_b(device, work, args)
        if "C" in args.parts:
            summary["C"] = part_c(device, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    summary["seconds"] = time.perf_counter() - started
    text = json.dumps(summary, default=float)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "summary.json").write_text(text + "\n")
    return summary


if __name__ == "__main__":
    result = main()
    sys.exit(0 if all(result.get(part, {"ok": True})["ok"] for part in ("A", "C")) else 1)
