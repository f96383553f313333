"""Padding-free (packed) forward: the same response log-probs and gradients as the padded forward.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL (dense and MoE) pack; Qwen3.5's Gated DeltaNet layers (Qwen3.5-MoE's
too) carry state along the row, so hybrid models run the padded forward, whose rows equal each
sequence alone (tested here, with why).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_families import HYBRID, PATHS

from sophiavl_cli.algo.losses import token_logprobs
from sophiavl_cli.engine.workers.batching import TrainSequence, build_micro_batch
from sophiavl_cli.engine.workers.forward import ResponseForward, response_tokens


def _image_sequence(
    config: dict, index: int, seed: int, text: list[int], response: list[int]
) -> TrainSequence:
    prompt = [
        config["vision_start_token_id"],
        *[config["image_token_id"]] * 4,
        config["vision_end_token_id"],
        *text,
    ]
    vision = config["vision_config"]
    patch = vision.get("patch_size", 14)
    pixels = torch.randn(16, 3 * 2 * patch * patch, generator=torch.Generator().manual_seed(seed)).numpy()
    return TrainSequence(index, prompt, response, pixels, np.asarray([[1, 4, 4]], dtype=np.int64))


def _text_sequence(index: int, prompt: list[int], response: list[int]) -> TrainSequence:
    return TrainSequence(index, prompt, response, None, None)


def _load(name: str):
    from sophiavl_cli.models.loading import load_vl_model
    from sophiavl_cli.models.resolve import resolve_model

    torch.set_num_threads(1)
    folder = resolve_model(f"builtin:{name}")
    model = load_vl_model(folder, dtype=torch.float32, device=torch.device("cpu"), attn_implementation="sdpa")
    return model, json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module", params=[name for name in PATHS["padding-free"] if name not in HYBRID])
def model_and_config(request):
    return _load(request.param)


def _logprobs(model, mb, packed: bool) -> torch.Tensor:
    forward = ResponseForward(model.config, torch.device("cpu"), packed=packed)
    logits = forward.logits(model, mb)  # [B, R, V]
    mask = torch.tensor(mb.response_mask)
    return token_logprobs(logits, response_tokens(mb, torch.device("cpu")), 1.0) * mask  # [B, R]


@pytest.mark.parametrize("kind", ["mixed", "text_only"])
def test_packed_logprobs_equal_padded_ones_within_1e_5(model_and_config, kind):
    model, config = model_and_config
    if kind == "mixed":  # rows with and without images, prompts and responses of different lengths
        sequences = [
            _image_sequence(config, 0, 1, list(range(10, 22)), [30, 31, 32, 33, 34]),
            _text_sequence(1, [40, 41, 42], [50, 51]),
            _image_sequence(config, 2, 2, list(range(60, 64)), [70, 71, 72, 73, 74, 75, 76]),
        ]
    else:
        sequences = [_text_sequence(0, [5, 6, 7, 8, 9], [11]), _text_sequence(1, [12, 13], [14, 15, 16, 17])]
    mb = build_micro_batch(sequences, pad_id=0)
    with torch.no_grad():
        padded = _logprobs(model, mb, packed=False)
        packed = _logprobs(model, mb, packed=True)
    assert padded.abs().sum() > 0
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=0)


def test_packed_gradients_equal_padded_ones(model_and_config):
    model, config = model_and_config
    sequences = [
        _image_sequence(config, 0, 3, [10, 11, 12], [20, 21, 22, 23]),
        _text_sequence(1, [40, 41, 42, 43, 44, 45], [50, 51]),
    ]
    mb = build_micro_batch(sequences, pad_id=0)
    grads = []
    for packed in (False, True):
        model.zero_grad(set_to_none=True)
        _logprobs(model, mb, packed).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad(set_to_none=True)
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-4, rtol=1e-3, msg=name)


# ---- hybrid (linear-attention) layers ---------------------------------------------------------------


@pytest.mark.parametrize("name", HYBRID)
def test_hybrid_models_run_padded_and_each_padded_row_equals_its_sequence_alone(name: str):
    """Qwen3.5: packing is off (`packing_supported`), and the padded forward it runs instead keeps
    rows apart: every row's log-probs equal that sequence's forward on its own, to 1e-5 in fp32
    (left padding reaches the Gated DeltaNet layer zeroed, so each row starts from a zero state)."""
    from sophiavl_cli.models.families import packing_supported

    model, config = _load(name)
    assert not packing_supported(model.config)
    sequences = [
        _image_sequence(config, 0, 1, list(range(10, 22)), [30, 31, 32, 33, 34]),
        _text_sequence(1, [40, 41, 42], [50, 51]),
        _image_sequence(config, 2, 2, list(range(60, 64)), [70, 71, 72, 73, 74, 75, 76]),
    ]
    with torch.no_grad():
        together = _logprobs(model, build_micro_batch(sequences, pad_id=0), packed=False)
        for row, sequence in enumerate(sequences):
            alone = _logprobs(model, build_micro_batch([sequence], pad_id=0), packed=False)[0]
            width = len(sequence.response_ids)
            assert alone.abs().sum() > 0
            torch.testing.assert_close(together[row, :width], alone[:width], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", HYBRID)
def test_packing_a_hybrid_model_would_carry_state_across_sequences(name: str):
    """Why packing is off for Qwen3.5: in one packed row transformers' Gated DeltaNet (its recurrence
    and causal convolution take no sequence boundaries here) lets the first sequence change the
    second's log-probs. If a transformers release starts honouring the boundaries, this fails and
    packing can be turned back on for hybrid models."""
    model, _ = _load(name)
    sequences = [_text_sequence(0, [5, 6, 7, 8, 9], [11, 12]), _text_sequence(1, [12, 13], [14, 15, 16, 17])]
    mb = build_micro_batch(sequences, pad_id=0)
    with torch.no_grad():
        padded = _logprobs(model, mb, packed=False)
        packed = _logprobs(model, mb, packed=True)
    torch.testing.assert_close(packed[0], padded[0], atol=1e-5, rtol=0)  # the first sequence is unaffected
    assert (packed[1] - padded[1]).abs().max() > 1e-4  # the second inherits the first's state
