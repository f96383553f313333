"""VLProcessor and smart_resize against transformers' own Qwen2-VL processing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from model_families import ALL, HYBRID
from PIL import Image

from sophiavl_cli.errors import UserError
from sophiavl_cli.models import VLProcessor, smart_resize

BIG = 28 * 28 * 1280


def _noise_image(height: int, width: int, *, seed: int, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels, mode=mode)


def _messages(num_images: int, text: str) -> list[dict]:
    parts: list[dict] = [{"type": "image"} for _ in range(num_images)]
    return [
        {"role": "system", "content": "You FIRST think about the reasoning process."},
        {"role": "user", "content": [*parts, {"type": "text", "text": text}]},
    ]


@pytest.fixture(scope="module")
def processor(tiny_model_dir: Path) -> VLProcessor:
    return VLProcessor.from_pretrained(tiny_model_dir)


# ---- smart_resize ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("height", "width", "min_pixels", "max_pixels", "expected"),
    [
        (100, 200, 56 * 56, BIG, (112, 196)),  # rounds each side to a multiple of 28
        (56, 84, 56 * 56, BIG, (56, 84)),  # already on the grid: unchanged
        (70, 70, 28 * 28, BIG, (56, 56)),  # 2.5 rounds half to even, as Python's round does
        (98, 98, 28 * 28, BIG, (112, 112)),  # 3.5 rounds half to even, up this time
        (10, 10, 56 * 56, BIG, (56, 56)),  # too small: scaled up to min_pixels
        (4000, 3000, 56 * 56, 256 * 28 * 28, (504, 364)),  # too big: scaled down under max_pixels
        (20, 4000, 56 * 56, BIG, (28, 4004)),  # a thin strip keeps at least one row of patches
    ],
)
def test_smart_resize_follows_the_qwen2_vl_rounding_rule(
    height: int, width: int, min_pixels: int, max_pixels: int, expected: tuple[int, int]
) -> None:
    assert smart_resize(height, width, min_pixels=min_pixels, max_pixels=max_pixels) == expected


def test_smart_resize_keeps_area_within_bounds_and_sides_on_the_grid() -> None:
    rng = np.random.default_rng(0)
    for height, width in rng.integers(1, 5000, (200, 2)):
        if max(height, width) / min(height, width) > 200:
            continue
        h, w = smart_resize(int(height), int(width), min_pixels=3136, max_pixels=200704)
        assert h % 28 == 0 and w % 28 == 0
        assert 3136 <= h * w <= 200704


def test_smart_resize_rejects_aspect_ratios_above_200() -> None:
    with pytest.raises(UserError, match="aspect ratio 201"):
        smart_resize(10, 2010, min_pixels=3136, max_pixels=BIG)


def test_smart_resize_matches_transformers_on_many_sizes() -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as reference

    rng = np.random.default_rng(1)
    for height, width in rng.integers(14, 3000, (300, 2)):
        ours = smart_resize(int(height), int(width), min_pixels=3136, max_pixels=200704)
        assert ours == reference(int(height), int(width), 28, 3136, 200704)


# ---- VLProcessor ----------------------------------------------------------------------------------


def test_chat_template_gives_the_qwen_text_format(processor: VLProcessor) -> None:
    text = processor.apply_chat_template(_messages(1, "How many circles?"))
    assert text == (
        "<|im_start|>system\nYou FIRST think about the reasoning process.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>How many circles?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_chat_template_adds_the_default_system_turn_and_can_omit_the_generation_prompt(
    processor: VLProcessor,
) -> None:
    messages = [
        {"role": "user", "content": "2 + 2?"},
        {"role": "assistant", "content": "<think>easy</think><answer>4</answer>"},
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n2 + 2?<|im_end|>\n"
        "<|im_start|>assistant\n<think>easy</think><answer>4</answer><|im_end|>\n"
    )


def test_encode_expands_each_image_placeholder_to_its_merged_patch_count(processor: VLProcessor) -> None:
    images = [_noise_image(100, 150, seed=0), _noise_image(60, 60, seed=1)]
    encoded = processor.encode(processor.apply_chat_template(_messages(2, "Compare them.")), images)

    assert encoded.image_grid_thw is not None and encoded.pixel_values is not None
    assert encoded.image_grid_thw.dtype == np.int64
    assert encoded.image_grid_thw.tolist() == [[1, 8, 10], [1, 4, 4]]
    assert encoded.pixel_values.dtype == np.float32
    assert encoded.pixel_values.shape == (8 * 10 + 4 * 4, 3 * 2 * 14 * 14)
    assert encoded.num_image_tokens == 20 + 4
    assert encoded.input_ids.count(processor.image_token_id) == 24
    assert processor.num_image_tokens(100, 150) == 20


@pytest.mark.parametrize("name", ALL)
def test_ids_and_pixels_equal_what_the_transformers_processor_gives(name: str) -> None:
    from transformers import AutoProcessor

    from sophiavl_cli.models import resolve_model

    folder = resolve_model(f"builtin:{name}")
    processor = VLProcessor.from_pretrained(folder)
    reference = AutoProcessor.from_pretrained(str(folder))
    images = [_noise_image(100, 150, seed=2), _noise_image(300, 41, seed=3, mode="RGBA")]
    text = processor.apply_chat_template(_messages(2, "What is 3.14 * 2? <think>"))
    theirs_text = reference.apply_chat_template(
        _messages(2, "What is 3.14 * 2? <think>"), tokenize=False, add_generation_prompt=True
    )
    # Qwen3.5's template opens a thinking block that sophiavl leaves to the response (next test)
    assert theirs_text == text + ("<think>\n" if name in HYBRID else "")

    ours = processor.encode(text, images)
    theirs = reference(text=[text], images=images, return_tensors="np")

    assert ours.input_ids == theirs["input_ids"][0].tolist()
    assert np.array_equal(ours.image_grid_thw, theirs["image_grid_thw"])
    if name != "tiny-qwen2.5-vl":
        return  # pixels: at Qwen3's 32-pixel grid torchvision's kernel differs more (below)
    # AutoProcessor resizes with torchvision's bicubic when torchvision imports; at these sizes it
    # may round a resized 8-bit pixel to the neighbouring level. One level is 1/255 before
    # normalisation, 1 / (255 * std) after it: that is the tolerance, and on average they agree far
    # closer. (At Qwen3-VL's sizes for the same images, up to 19 levels apart on this noise: why
    # sophiavl pins the PIL kernel, tested exactly below, and hands vLLM images already fitted.)
    one_level = 1 / (255 * min(processor.image_config.image_std))
    assert ours.pixel_values is not None
    difference = np.abs(ours.pixel_values - theirs["pixel_values"])
    assert difference.max() <= one_level + 1e-5
    assert difference.mean() < one_level / 4


def test_a_template_that_opens_think_leaves_the_whole_format_to_the_response() -> None:
    """Qwen3.5's generation prompt ends with `<think>\n`; the SophiaVL-R1 prompt asks the response for
    `<think>...</think><answer>...</answer>`, which the format reward and the thinking RM read from
    the response alone. So the opener goes, and a response in that format parses as one."""
    from sophiavl_cli.models import resolve_model
    from sophiavl_cli.rewards.format import extract_answer, passes_format

    messages = _messages(0, "2 + 2?")
    for name in ("tiny-qwen3-vl", "tiny-qwen3.5"):
        processor = VLProcessor.from_pretrained(resolve_model(f"builtin:{name}"))
        text = processor.apply_chat_template(messages)
        assert text.endswith("<|im_start|>user\n2 + 2?<|im_end|>\n<|im_start|>assistant\n"), name
        assert processor.apply_chat_template(messages, add_generation_prompt=False).endswith("<|im_end|>\n")
        response = "<think>\n2 and 2 make 4.\n</think>\n<answer>4</answer>"
        ids = processor.tokenizer.encode(text + response, add_special_tokens=False)
        prompt_length = len(processor.tokenizer.encode(text, add_special_tokens=False))
        decoded = processor.decode(ids[prompt_length:])  # as rollouts are decoded: <think> is kept
        assert passes_format(decoded) and extract_answer(decoded, which="last") == "4", name
    qwen3_5 = VLProcessor.from_pretrained(resolve_model("builtin:tiny-qwen3.5"))
    raw = qwen3_5.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert raw == qwen3_5.apply_chat_template(messages) + "<think>\n"  # what the template itself renders


@pytest.mark.parametrize("name", ["tiny-qwen2.5-vl", "tiny-qwen3-vl"])
def test_pixels_equal_the_pil_image_processor_exactly(name: str) -> None:
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from sophiavl_cli.models import resolve_model

    tiny_model_dir = resolve_model(f"builtin:{name}")
    processor = VLProcessor.from_pretrained(tiny_model_dir)
    reference = Qwen2VLImageProcessorPil.from_pretrained(str(tiny_model_dir))
    images = [_noise_image(333, 123, seed=4), _noise_image(20, 20, seed=5), _noise_image(900, 700, seed=6)]
    expected = reference(images=images, return_tensors="np")
    pixel_values, grid_thw = processor.preprocess_images(images)
    assert np.array_equal(grid_thw, expected["image_grid_thw"])
    assert np.array_equal(pixel_values, expected["pixel_values"])


def test_fit_image_makes_a_second_resize_a_no_op(processor: VLProcessor) -> None:
    image = _noise_image(333, 123, seed=7)
    fitted = processor.fit_image(image)
    assert (fitted.height, fitted.width) == smart_resize(333, 123, min_pixels=3136, max_pixels=256 * 28 * 28)
    first, _ = processor.preprocess_images([image])
    second, _ = processor.preprocess_images([fitted])
    assert np.array_equal(first, second)


def test_text_only_prompts_have_no_pixels(processor: VLProcessor) -> None:
    encoded = processor.encode(processor.apply_chat_template([{"role": "user", "content": "hi"}]), [])
    assert encoded.pixel_values is None and encoded.image_grid_thw is None
    assert encoded.num_image_tokens == 0
    assert (
        processor.decode(encoded.input_ids) == "system\nYou are a helpful assistant.\nuser\nhi\nassistant\n"
    )


def test_image_count_mismatch_is_rejected(processor: VLProcessor) -> None:
    text = processor.apply_chat_template(_messages(2, "two placeholders"))
    with pytest.raises(UserError, match="2 image placeholder\\(s\\) but 1 image"):
        processor.encode(text, [_noise_image(56, 56, seed=8)])


def test_pixel_bounds_can_be_overridden_at_load(tiny_model_dir: Path) -> None:
    small = VLProcessor.from_pretrained(tiny_model_dir, min_pixels=28 * 28, max_pixels=4 * 28 * 28)
    assert small.image_grid(500, 500) == (1, 4, 4)
    with pytest.raises(UserError, match="min_pixels"):
        VLProcessor.from_pretrained(tiny_model_dir, min_pixels=10_000, max_pixels=100)


def test_a_folder_without_preprocessor_config_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no preprocessor_config\.json"):
        VLProcessor.from_pretrained(tmp_path)


def test_collapsing_image_tokens_restores_one_placeholder_per_image(processor: VLProcessor) -> None:
    text = processor.apply_chat_template(_messages(2, "Compare them."))
    encoded = processor.encode(text, [_noise_image(100, 150, seed=0), _noise_image(60, 60, seed=1)])
    assert processor.collapse_image_tokens(encoded.input_ids) == processor.tokenizer.encode(
        text, add_special_tokens=False
    )
