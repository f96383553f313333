"""FLOPs per token, peak FLOP/s lookup and the perf/* rates (pure arithmetic, one real tiny model)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from model_families import ALL

from sophiavl_cli.engine.observe.throughput import (
    FlopsModel,
    LinearAttentionShape,
    MoEShape,
    mfu,
    peak_flops,
    throughput_metrics,
)
from sophiavl_cli.metrics.registry import metric

QWEN25_VL_3B_TEXT = SimpleNamespace(  # public config.json numbers of Qwen2.5-VL-3B-Instruct
    num_hidden_layers=36,
    hidden_size=2048,
    num_attention_heads=16,
    num_key_value_heads=2,
    intermediate_size=11008,
    vocab_size=151936,
)


@pytest.mark.parametrize("name", ALL)
def test_matmul_params_equal_the_weights_a_token_passes_through_in_each_family(name):
    """Dense: every linear weight of the language model plus the LM head. MoE: the router and
    top-k of the experts (the active weights); Qwen3.5: its gated attention and Gated DeltaNet
    projections, counted from the real modules."""
    import torch

    from sophiavl_cli.models.loading import load_vl_model
    from sophiavl_cli.models.resolve import resolve_model

    model = load_vl_model(resolve_model(f"builtin:{name}"), dtype=torch.float32, device=torch.device("cpu"))
    language = model.model.language_model
    linear = sum(m.weight.numel() for m in language.modules() if isinstance(m, torch.nn.Linear))
    text = model.config.get_text_config()
    routed = sum(p.numel() for n, p in language.named_parameters() if ".mlp.experts." in n)
    routers = sum(p.numel() for n, p in language.named_parameters() if n.endswith(".mlp.gate.weight"))
    active = routed * getattr(text, "num_experts_per_tok", 0) // max(getattr(text, "num_experts", 0), 1)
    expected = linear + routers + active + model.lm_head.weight.numel()
    assert FlopsModel.from_config(model.config).matmul_params == expected
    if routed:
        assert 0 < active < routed  # top-2 of 4 experts: half the expert weights, not all of them


def test_hybrid_layers_have_no_quadratic_term_and_moe_counts_active_experts():
    dense = FlopsModel(2, 64, 2, 1, 32, 128, 100)
    hybrid = FlopsModel(
        2, 64, 2, 1, 32, 128, 100, gated_attention=True, linear=LinearAttentionShape(1, 1, 2, 32, 32, 4)
    )

    # one full-attention layer: the S^2 term halves; the linear layer's extra cost grows with S only
    def quadratic(shape: FlopsModel, s: int) -> float:  # all but the weights' 2 * N * S and the head
        return shape.forward_flops(s, 1) - 2 * shape.decoder_params * s - 2 * shape.head_params

    linear_part = hybrid.linear.num_layers * hybrid.linear.token_flops()  # type: ignore[union-attr]
    for s in (10, 100, 1000):
        assert quadratic(hybrid, s) - linear_part * s == quadratic(dense, s) / 2
    everything = FlopsModel(2, 64, 2, 1, 32, 0, 100, moe=MoEShape(2, 8, 8, 48))
    top2 = FlopsModel(2, 64, 2, 1, 32, 0, 100, moe=MoEShape(2, 8, 2, 48))
    experts_per_layer = 3 * 64 * 48
    assert everything.decoder_params - top2.decoder_params == 2 * 6 * experts_per_layer


def test_a_3b_sized_decoder_has_about_three_billion_matmul_weights():
    shape = FlopsModel.from_config(SimpleNamespace(text_config=QWEN25_VL_3B_TEXT))
    assert shape.head_dim == 128 and shape.num_kv_heads == 2
    assert 2.9e9 < shape.matmul_params < 3.2e9


def test_training_flops_are_three_forwards_of_six_n_plus_the_attention_term():
    shape = FlopsModel(
        num_layers=2,
        hidden_size=4,
        num_heads=2,
        num_kv_heads=1,
        head_dim=2,
        intermediate_size=8,
        vocab_size=10,
    )
    # per layer: q 4*4 + k,v 2*4*2 + o 4*4 + mlp 3*4*8 = 16 + 16 + 16 + 96 = 144; x2 layers + lm head 40
    assert shape.matmul_params == 2 * 144 + 40
    seq, response = 5, 2
    forward = 2 * 288 * seq + 4 * 2 * 4 * seq**2 + 2 * 40 * response  # the head only on the 2 responses
    assert shape.forward_flops(seq, response) == forward
    assert shape.training_flops([(seq, response), (seq, response)]) == 6 * forward


def test_a_7b_step_counts_the_head_on_response_tokens_only_as_a_hand_count_does():
    """Qwen2.5-VL-7B's language model (config.json): a 1000-token prompt with a 500-token response."""
    shape = FlopsModel(
        num_layers=28,
        hidden_size=3584,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        vocab_size=152064,
    )
    q = o = 3584 * 3584  # 12,845,056
    k = v = 3584 * 4 * 128  # 1,835,008
    mlp = 3 * 3584 * 18944  # 203,685,888
    assert q + k + v + o + mlp == 233_046_016
    decoder = 28 * 233_046_016  # 6,525,288,448
    head = 152064 * 3584  # 544,997,376; the 152064 x 3584 embedding is a lookup and not counted
    assert (shape.decoder_params, shape.head_params) == (decoder, head)
    hand = 2 * decoder * 1500 + 4 * 28 * 3584 * 1500**2 + 2 * head * 500
    assert shape.forward_flops(1500, 500) == hand == 21_024_030_720_000
    assert shape.training_flops([(1500, 500)]) == 3 * hand
    assert shape.forward_flops(1500, 500) < shape.forward_flops(1500, 1500)  # head on all: too high


def test_peak_flops_come_from_the_device_name_or_the_override():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12
    assert peak_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_flops("NVIDIA H100 NVL") == 835e12
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("NVIDIA A800-SXM4-80GB") == 312e12
    assert peak_flops("cpu") is None
    assert peak_flops("cpu", "1e12") == 1e12
    with pytest.raises(ValueError, match="SOPHIAVL_PEAK_FLOPS"):
        peak_flops("cpu", "fast")


def test_throughput_metrics_divide_by_phase_time_and_world_size_and_are_registered():
    step = {
        "timing/step": 10.0,
        "timing/gen": 4.0,
        "timing/update": 2.0,
        "perf/tokens": 1000.0,
        "perf/response_tokens": 400.0,
        "perf/update_tokens": 1000.0,
        "perf/update_flops": 8e12,
    }
    out = throughput_metrics(step, world_size=2, peak=1e12)
    assert out["perf/tokens_per_s"] == 100.0
    assert out["perf/tokens_per_s_per_worker"] == 50.0
    assert out["perf/gen_tokens_per_s"] == 100.0
    assert out["perf/gen_tokens_per_s_per_worker"] == 50.0
    assert out["perf/update_tokens_per_s_per_worker"] == 250.0
    assert out["perf/mfu"] == pytest.approx(2.0) == mfu(8e12, 2.0, 2, 1e12)
    for key in out:
        metric(key)  # raises for an unregistered key
    assert "perf/mfu" not in throughput_metrics(step, world_size=2, peak=None)
