"""Throughput and model-FLOPs utilisation (MFU) of a training step, as pure arithmetic.

MFU counts *model* FLOPs (what the maths of the model needs), not hardware FLOPs: activation
recomputation under gradient checkpointing is not counted, so two runs of the same model are
comparable whatever their memory settings (PaLM's definition; verl/EasyR1 report the same).

A forward pass over a sequence of S tokens of which K get logits costs

    2 * N_decoder * S        (every decoder weight matrix: a multiply and an add per weight per token)
  + 4 * L * d_attn * S^2     (QK^T and attention x V over the whole sequence, per layer)
  + 2 * V * h * K            (the LM head, on the K positions whose logits are computed)

with N_decoder the weights of the decoder's linear layers (q, k, v, o, gate, up, down) and
d_attn = heads x head_dim. The training forward computes logits only for the response tokens
(`logits_to_keep`), so K is the response length, not S: at 1k prompt + 0.5k response tokens on
a 7B shape the head on all S would overstate the step's FLOPs by ~4%. The input embedding is a
lookup, not a matmul, and is left out (verl's counter adds embedding and head on every token).
Backward costs twice the forward, so a trained token costs 3x. The vision tower's FLOPs on
image patches are left out: MFU is a slight underestimate on image-heavy batches, never an
overestimate.

Per family (`from_config`):
- MoE layers (Qwen3-VL-MoE, Qwen3.5-MoE) count the *active* weights: the router, the top-k
  experts a token is sent to (`num_experts_per_tok` of `num_experts`) and any shared expert, so a
  30B-A3B model is counted as the ~3B it computes per token, not as 30B.
- Qwen3.5's full-attention layers have an output gate (q_proj twice as wide); its Gated DeltaNet
  layers have no S^2 term: their projections count as weights, and the recurrence costs
  6 * value_heads * d_k * d_v per token (reading the state, writing the update, reading the
  output, a multiply-add each) plus the causal convolution, 2 * conv_channels * kernel per token.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sophiavl_cli.metrics.keys import (
    PERF_GEN_TOKENS_PER_S,
    PERF_GEN_TOKENS_PER_S_PER_WORKER,
    PERF_MFU,
    PERF_RESPONSE_TOKENS,
    PERF_TOKENS,
    PERF_TOKENS_PER_S,
    PERF_TOKENS_PER_S_PER_WORKER,
    PERF_UPDATE_FLOPS,
    PERF_UPDATE_TOKENS,
    PERF_UPDATE_TOKENS_PER_S_PER_WORKER,
    TIMING_GEN,
    TIMING_STEP,
    TIMING_UPDATE,
)

# Dense (no sparsity) bf16 tensor-core peak per GPU, FLOP/s, from the vendors' datasheets.
# Matched by substring of torch.cuda.get_device_name(), first match wins (PCIe and NVL before SXM).
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),  # datasheet: 1,671 TFLOPS with sparsity per GPU
    ("H200 NVL", 835e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("H800", 989e12),
    ("A100", 312e12),
    ("A800", 312e12),
)


@dataclass(frozen=True)
class MoEShape:
    """The routed part of a MoE decoder, per MoE layer."""

    num_layers: int  # layers whose MLP is routed (the others are dense, `intermediate_size`)
    num_experts: int
    experts_per_token: int
    expert_intermediate_size: int
    shared_intermediate_size: int = 0  # an always-on shared expert (Qwen3.5-MoE), 0 when none


@dataclass(frozen=True)
class LinearAttentionShape:
    """The Gated DeltaNet (linear-attention) layers of a hybrid decoder."""

    num_layers: int
    key_heads: int
    value_heads: int
    key_head_dim: int
    value_head_dim: int
    conv_kernel: int

    @property
    def key_dim(self) -> int:
        return self.key_heads * self.key_head_dim

    @property
    def value_dim(self) -> int:
        return self.value_heads * self.value_head_dim

    def params(self, hidden: int) -> int:
        """Projection weights of one layer: qkv and z in, the two per-head gates (b, a), out."""
        return (
            hidden * (2 * self.key_dim + self.value_dim)
            + 2 * hidden * self.value_dim
            + 2 * hidden * self.value_heads
        )

    def token_flops(self) -> int:
        """Per token, per layer: the delta-rule recurrence and the causal convolution."""
        recurrence = 6 * self.value_heads * self.key_head_dim * self.value_head_dim
        return recurrence + 2 * (2 * self.key_dim + self.value_dim) * self.conv_kernel


@dataclass(frozen=True)
class FlopsModel:
    """The shape numbers of a decoder that its FLOPs depend on."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    gated_attention: bool = False  # q_proj also yields a sigmoid output gate (Qwen3.5)
    moe: MoEShape | None = None
    linear: LinearAttentionShape | None = None

    @classmethod
    def from_config(cls, config: Any) -> FlopsModel:
        """From a transformers config; a VL config's language part is its `text_config`."""
        text = getattr(config, "text_config", None) or config
        heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        layers = int(text.num_hidden_layers)
        return cls(
            num_layers=layers,
            hidden_size=int(text.hidden_size),
            num_heads=heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or heads),
            head_dim=int(head_dim),
            # Qwen3.5-MoE's config has no dense MLP width (every layer is routed)
            intermediate_size=int(getattr(text, "intermediate_size", 0) or 0),
            vocab_size=int(text.vocab_size),
            gated_attention=bool(getattr(text, "attn_output_gate", _is_qwen3_5(text))),
            moe=_moe_shape(text, layers),
            linear=_linear_shape(text),
        )

    @property
    def attention_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def attention_layers(self) -> int:
        """Softmax-attention layers (the S^2 term); the rest are linear attention."""
        return self.num_layers - (self.linear.num_layers if self.linear else 0)

    @property
    def attention_params(self) -> int:
        """One softmax-attention layer's projections: q (twice as wide with the output gate), k, v, o."""
        h, q, kv = self.hidden_size, self.attention_dim, self.num_kv_heads * self.head_dim
        return h * q * (2 if self.gated_attention else 1) + 2 * h * kv + q * h

    @property
    def dense_mlp_params(self) -> int:
        """One dense gated MLP: gate, up, down."""
        return 3 * self.hidden_size * self.intermediate_size

    def moe_mlp_params(self, experts: int) -> int:
        """One routed MLP with `experts` of its experts counted: the router (over all of them), those
        experts' gate/up/down, and the shared expert with its gate."""
        assert self.moe is not None
        h, m = self.hidden_size, self.moe
        shared = 3 * h * m.shared_intermediate_size + (h if m.shared_intermediate_size else 0)
        return experts * 3 * h * m.expert_intermediate_size + h * m.num_experts + shared

    @property
    def decoder_params(self) -> int:
        """Weights a token passes through in the decoder's linear layers, over all layers (MoE: active)."""
        mixing = self.attention_layers * self.attention_params + (
            self.linear.params(self.hidden_size) * self.linear.num_layers if self.linear else 0
        )
        moe_layers = self.moe.num_layers if self.moe else 0
        mlp = (self.num_layers - moe_layers) * self.dense_mlp_params
        if self.moe is not None:
            mlp += moe_layers * self.moe_mlp_params(self.moe.experts_per_token)
        return mixing + mlp

    @property
    def head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def matmul_params(self) -> int:
        """All matmul weights of the language model: the decoder's linear layers plus the LM head."""
        return self.decoder_params + self.head_params

    def forward_flops(self, seq_len: int, logit_tokens: int) -> float:
        """FLOPs of one forward pass over `seq_len` tokens with logits at `logit_tokens` positions."""
        decoder = (
            2 * self.decoder_params * seq_len + 4 * self.attention_layers * self.attention_dim * seq_len**2
        )
        if self.linear is not None:
            decoder += self.linear.num_layers * self.linear.token_flops() * seq_len
        return float(decoder + 2 * self.head_params * logit_tokens)

    def training_flops(self, sequences: Iterable[tuple[int, int]]) -> float:
        """FLOPs of forward + backward (3x forward) over (sequence length, response length) pairs."""
        return 3.0 * sum(self.forward_flops(total, response) for total, response in sequences)


def _is_qwen3_5(text: Any) -> bool:
    return str(getattr(text, "model_type", "")).startswith("qwen3_5")


def _moe_shape(text: Any, layers: int) -> MoEShape | None:
    experts = int(getattr(text, "num_experts", 0) or 0)
    if experts == 0:
        return None
    step = int(getattr(text, "decoder_sparse_step", 1) or 1)
    dense = set(getattr(text, "mlp_only_layers", None) or [])
    routed = sum(1 for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return MoEShape(
        num_layers=routed,
        num_experts=experts,
        experts_per_token=int(text.num_experts_per_tok),
        expert_intermediate_size=int(text.moe_intermediate_size),
        shared_intermediate_size=int(getattr(text, "shared_expert_intermediate_size", 0) or 0),
    )


def _linear_shape(text: Any) -> LinearAttentionShape | None:
    linear = sum(1 for kind in getattr(text, "layer_types", None) or () if kind == "linear_attention")
    if linear == 0:
        return None
    return LinearAttentionShape(
        num_layers=linear,
        key_heads=int(text.linear_num_key_heads),
        value_heads=int(text.linear_num_value_heads),
        key_head_dim=int(text.linear_key_head_dim),
        value_head_dim=int(text.linear_value_head_dim),
        conv_kernel=int(text.linear_conv_kernel_dim),
    )


def peak_flops(device_name: str, override: str | None = None) -> float | None:
    """Peak dense bf16 FLOP/s of one device: `override` (SOPHIAVL_PEAK_FLOPS) if set, else the table.

    None when the device is unknown (a CPU, or a GPU not in the table): MFU is then not logged.
    """
    if override:
        try:
            value = float(override)
        except ValueError:
            raise ValueError(f"SOPHIAVL_PEAK_FLOPS={override!r} is not a number; use e.g. 989e12") from None
        if value <= 0:
            raise ValueError(f"SOPHIAVL_PEAK_FLOPS={override!r} must be positive")
        return value
    for fragment, flops in PEAK_BF16_FLOPS:
        if fragment.lower() in device_name.lower():
            return flops
    return None


def throughput_metrics(metrics: dict[str, float], world_size: int, peak: float | None) -> dict[str, float]:
    """The perf/* rates of one step from its token counts, FLOPs and `timing/*` seconds.

    `peak` is one device's peak FLOP/s (None: no MFU). Rates whose phase did not run are absent.
    """
    step_s = metrics.get(TIMING_STEP, 0.0)
    gen_s = metrics.get(TIMING_GEN, 0.0)
    update_s = metrics.get(TIMING_UPDATE, 0.0)
    tokens = metrics.get(PERF_TOKENS, 0.0)
    out: dict[str, float] = {}
    if step_s > 0:
        out[PERF_TOKENS_PER_S] = tokens / step_s
        out[PERF_TOKENS_PER_S_PER_WORKER] = tokens / step_s / world_size
    if gen_s > 0:
        out[PERF_GEN_TOKENS_PER_S] = metrics.get(PERF_RESPONSE_TOKENS, 0.0) / gen_s
        out[PERF_GEN_TOKENS_PER_S_PER_WORKER] = out[PERF_GEN_TOKENS_PER_S] / world_size
    if update_s > 0:
        trained = metrics.get(PERF_UPDATE_TOKENS, 0.0)
        out[PERF_UPDATE_TOKENS_PER_S_PER_WORKER] = trained / update_s / world_size
        flops = metrics.get(PERF_UPDATE_FLOPS)
        if peak is not None and flops is not None:
            out[PERF_MFU] = mfu(flops, update_s, world_size, peak)
    return out


def mfu(flops: float, seconds: float, num_devices: int, peak: float) -> float:
    """Share of the devices' peak FLOP/s that `flops` of model work in `seconds` used."""
    return flops / (seconds * num_devices * peak)
