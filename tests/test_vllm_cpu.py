"""The built-in tiny model through vLLM on CPU, against transformers.

The rollout backend relies on two facts checked here: vLLM expands image placeholders to the
same prompt ids as `VLProcessor.encode`, and its greedy tokens equal transformers' greedy tokens
for the same prompt and pixels (fp32, SDPA). One engine per module: starting it takes 25-40 s.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image, ImageDraw

from sophiavl_cli.models import VLProcessor, load_vl_model

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

NUM_TOKENS = 16


@pytest.fixture(scope="module")
def llm(tiny_model_dir: Path) -> Iterator[Any]:
    vllm = pytest.importorskip("vllm")
    engine = vllm.LLM(
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=1024,
        max_num_seqs=4,
        enforce_eager=True,
        seed=0,
        limit_mm_per_prompt={"image": 1},
        # On CPU vLLM otherwise reserves gpu_memory_utilization (0.92) of all RAM up front and
        # refuses to start when other processes hold more than 8% of it.
        kv_cache_memory_bytes=32 * 2**20,
    )
    yield engine
    del engine
    gc.collect()


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path) -> VLProcessor:
    return VLProcessor.from_pretrained(tiny_model_dir)


def _shapes_image() -> Image.Image:
    image = Image.new("RGB", (150, 100), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 60, 60), fill="red")
    draw.rectangle((80, 30, 140, 90), fill="blue")
    return image


def _hf_greedy(folder: Path, ids: list[int], pixel_values: Any, grid_thw: Any) -> list[int]:
    model = load_vl_model(folder, dtype=torch.float32)
    inputs: dict[str, Any] = {
        "input_ids": torch.tensor([ids]),
        "attention_mask": torch.ones(1, len(ids), dtype=torch.long),
    }
    if pixel_values is not None:
        inputs["pixel_values"] = torch.from_numpy(pixel_values)
        inputs["image_grid_thw"] = torch.from_numpy(grid_thw)
    with torch.no_grad():
        output = model.generate(
            **inputs, max_new_tokens=NUM_TOKENS, min_new_tokens=NUM_TOKENS, do_sample=False
        )
    return output[0, len(ids) :].tolist()


def _greedy() -> Any:
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)


def test_vllm_expands_image_prompts_like_vlprocessor_and_matches_transformers_greedy(
    llm: Any, processor: VLProcessor, tiny_model_dir: Path
) -> None:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many shapes?"}]}
    ]
    text = processor.apply_chat_template(messages)
    image = processor.fit_image(_shapes_image())
    encoded = processor.encode(text, [image])
    collapsed = processor.collapse_image_tokens(encoded.input_ids)

    from_text, from_ids = llm.generate(
        [
            {"prompt": text, "multi_modal_data": {"image": image}},
            {"prompt_token_ids": collapsed, "multi_modal_data": {"image": image}},
        ],
        _greedy(),
        use_tqdm=False,
    )

    assert list(from_text.prompt_token_ids) == encoded.input_ids
    assert list(from_ids.prompt_token_ids) == encoded.input_ids
    vllm_tokens = list(from_text.outputs[0].token_ids)
    assert len(vllm_tokens) == NUM_TOKENS
    assert list(from_ids.outputs[0].token_ids) == vllm_tokens
    hf_tokens = _hf_greedy(tiny_model_dir, encoded.input_ids, encoded.pixel_values, encoded.image_grid_thw)
    assert vllm_tokens == hf_tokens


def test_vllm_text_only_greedy_matches_transformers(
    llm: Any, processor: VLProcessor, tiny_model_dir: Path
) -> None:
    text = processor.apply_chat_template([{"role": "user", "content": "What is 12 + 30? <think>"}])
    encoded = processor.encode(text, [])
    (output,) = llm.generate([{"prompt_token_ids": encoded.input_ids}], _greedy(), use_tqdm=False)
    assert list(output.outputs[0].token_ids) == _hf_greedy(tiny_model_dir, encoded.input_ids, None, None)
