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
