"""The hf rollout never samples the image / video placeholder tokens.

A placeholder in a response makes the training forward count one image token more than the
image features it was given ("Image features and image tokens do not match"); the tiny random
model samples one every few steps. Here the real tiny model's head is rigged (a forward hook) so
the image placeholder always has the top logit: greedy and sampled rollouts must still avoid it.
"""

from __future__ import annotations

import json

import pytest
import torch

from sophiavl_cli.engine.rollout import RolloutPrompt, SamplingParams
from sophiavl_cli.engine.rollout.hf import HFRollout
from sophiavl_cli.models import load_vl_model


@pytest.fixture
def rigged(tiny_model_dir):
    torch.set_num_threads(1)
    config = json.loads((tiny_model_dir / "config.json").read_text())
    model = load_vl_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    image, video = config["image_token_id"], config["video_token_id"]

    def favour_placeholders(module, inputs, logits):  # [B, T, V]
        boosted = logits.clone()
        boosted[..., image] = boosted.max() + 50.0
        boosted[..., video] = boosted.max() + 40.0
        return boosted

    model.lm_head.register_forward_hook(favour_placeholders)
    rollout = HFRollout(model, eos_token_ids=[config["eos_token_id"]], pad_token_id=0)
    return rollout, image, video


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_rollouts_never_contain_the_image_or_video_placeholder(rigged, temperature):
    rollout, image, video = rigged
    outputs = rollout.generate(
        [RolloutPrompt(index=0, prompt_ids=[5, 6, 7, 8])],
        4,
        SamplingParams(max_tokens=8, temperature=temperature, return_logprobs=True),
        seed=1,
    )
    tokens = [t for o in outputs for t in o.response_ids]
    assert len(tokens) == 32  # generation went on, just never through a placeholder
    assert image not in tokens and video not in tokens
    # the returned log-probs stay those of the unconstrained policy (what training recomputes)
    assert all(o.logprobs is not None and float(o.logprobs.max()) < -10 for o in outputs)


def _mixed_prompts(model_dir) -> list[RolloutPrompt]:
    """Four prompts of different lengths, two with images of different sizes (left padding, image rows)."""
    from PIL import Image, ImageDraw

    from sophiavl_cli.models.processing import VLProcessor

    processor = VLProcessor.from_pretrained(model_dir)

    def picture(width: int, height: int) -> Image.Image:
        image = Image.new("RGB", (width, height), "white")
        ImageDraw.Draw(image).ellipse((5, 5, width - 5, height - 5), fill="red")
        return image

    specs = [
        ("How many shapes? " * 3, picture(112, 84)),
        ("What is 12 + 30?", None),
        ("Describe it.", picture(56, 56)),
        ("Is a square a rectangle? Think first. " * 2, None),
    ]
    prompts = []
    for index, (text, image) in enumerate(specs):
        content = ([{"type": "image"}] if image else []) + [{"type": "text", "text": text}]
        encoded = processor.encode(
            processor.apply_chat_template([{"role": "user", "content": content}]), [image] if image else []
        )
        prompts.append(
            RolloutPrompt(
                index=index,
                prompt_ids=encoded.input_ids,
                pixel_values=encoded.pixel_values,
                image_grid_thw=encoded.image_grid_thw,
            )
        )
    return prompts


@pytest.mark.parametrize("temperature", [1.0, 0.0])
def test_a_prompt_gets_the_same_samples_alone_and_in_a_batch_of_four(tiny_model_dir, temperature):
    """One batched generate (left-padded, images of other rows in it) samples each prompt exactly
    as generating it alone does: every sample draws from its own seeded generator."""
    torch.set_num_threads(1)
    model = load_vl_model(tiny_model_dir, dtype=torch.float32, device="cpu")
    config = json.loads((tiny_model_dir / "config.json").read_text())
    rollout = HFRollout(model, eos_token_ids=[config["eos_token_id"]], pad_token_id=0)
    prompts = _mixed_prompts(tiny_model_dir)
    assert len({len(p.prompt_ids) for p in prompts}) == 4
    sampling = SamplingParams(max_tokens=10, temperature=temperature, top_p=0.9, return_logprobs=True)
    batched = rollout.generate(prompts, 3, sampling, seed=5)
    assert [(o.prompt_index, o.sample_index) for o in batched] == [(i, k) for i in range(4) for k in range(3)]
    for prompt in prompts:
        alone = rollout.generate([prompt], 3, sampling, seed=5)
        together = [o for o in batched if o.prompt_index == prompt.index]
        assert [o.response_ids for o in alone] == [o.response_ids for o in together]
        assert [o.truncated for o in alone] == [o.truncated for o in together]
        for a, b in zip(alone, together, strict=True):
            torch.testing.assert_close(
                torch.from_numpy(a.logprobs), torch.from_numpy(b.logprobs), atol=1e-4, rtol=0
            )
    reordered = rollout.generate(prompts[::-1], 3, sampling, seed=5)
    key = {(o.prompt_index, o.sample_index): o.response_ids for o in batched}
    assert all(o.response_ids == key[(o.prompt_index, o.sample_index)] for o in reordered)
    if temperature > 0:  # the seeds matter: samples of one prompt differ, and another step samples anew
        assert len({tuple(o.response_ids) for o in batched if o.prompt_index == 0}) > 1
        other_step = rollout.generate(prompts, 3, sampling, seed=6)
        assert [o.response_ids for o in other_step] != [o.response_ids for o in batched]
