"""Activation bytes of one training forward: what autograd saves for backward, and what lives beside it.

Counted tensor by tensor from what transformers' decoders and vision towers save (measured with
`torch.autograd.graph.saved_tensors_hooks`; tests/test_plan_calibration.py checks these formulas
against that count on the built-in models of every family). T tokens, compute dtype of d bytes:

  decoder layer   T [2 n + d (2 q + 2 kv) + 4 H + m]
                  two RMSNorms n each (Qwen2/Qwen3: the fp32 upcast of the input, the normalised
                  value, its output feeding the next linear, one fp32 scale per token:
                  (4 + 2d) h + 4; Qwen3.5's zero-centred norm scales in fp32 and keeps the fp32
                  normalised value instead: (8 + d) h + 4);
                  attention's q, k, v and output, the softmax log-sum-exp (fp32, per head);
                  m the MLP: gate, up, act and product 4 d I
  q/k norms       Qwen3 and Qwen3.5: the same per head over head_dim: (4 + d)(q + kv) + 4 (H + KV)
                  (Qwen3.5: 8 (q + kv) + 4 (H + KV))
  output gate     Qwen3.5: the attention output, its sigmoid gate and their product: 3 d q
  routed MLP      per token, k = experts per token of E, I_e their width: the router's fp32 softmax
                  and top-k 4E + 12k + 4; per routed copy of the token the gathered input, gate/up
                  output, activation and down output 2 d h + 4 d I_e, and its indices and weight
                  24 + d; a shared expert as a dense MLP 4 d I_s plus its gate d h + 2 d
  Gated DeltaNet  per sequence of S tokens, padded to Lp = 64 ceil(S / 64) for the chunked
                  delta rule (transformers' PyTorch path; flash-linear-attention's kernels keep
                  less), V value heads of d_k x d_v, c = 2 key dim + value dim convolution channels:
                  S [2 c d + V (d + 8) + 8 V (d_k + 1) + 20 V d_v + 4 V]  (convolution in/out,
                  gates, l2-normalised q and k, the gated RMSNorm)
                  + Lp 4 V (5 * 64 + 4 d_v + 5 d_k + 4)  (padded q/k/v/beta, five 64 x 64 chunk
                  matrices per chunk, the triangular solves, decays)
                  + (Lp / 64) 4 V d_k d_v  (the recurrent state entering each chunk)
                  no S^2 term and no attention mask
  checkpointed    T h d per layer (the layer's input) + one layer recomputed during its backward
  vision block    the same per patch with the vision widths (3 h_v for the fused qkv); Qwen2-VL's
                  and Qwen3's LayerNorms save 2 d h_v + 8 each (input, output, statistics), their
                  GELU MLPs 3 d I_v (Qwen2-VL's QuickGELU) or 2 d I_v (Qwen3's tanh GELU)
  DeepStack       Qwen3-VL: each extra merger saves as the merger (4 d h_v + 8 per patch), and
                  each of the first decoder layers it feeds keeps 16 bytes per image token
  logits          R rows x V, in d: the response logits the loss keeps (one copy), chunked to fp32

q = heads x head_dim, kv = kv_heads x head_dim, h hidden, I the MLP width, H heads, R the response
positions whose logits are computed. Without flash-attention the padded micro-batch adds the
[B, 1, S, S] attention mask (in d) for each full-attention layer; flash-attention's packed rows need
none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sophiavl_cli.plan.architecture import Architecture, TextArch, VisionArch

LOSS_CHUNK_ROWS = 1024  # algo.losses.logprobs_and_entropy's default chunk: fp32 rows upcast at once
DELTA_CHUNK = 64  # transformers' chunk_gated_delta_rule chunk size
FP32 = 4


@dataclass(frozen=True)
class MicroBatch:
    """The shape of one forward: `sequences` rows padded to `seq_len`, `response` logit positions each."""

    sequences: int
    seq_len: int
    response: int
    images: int = 0  # images in the micro-batch (each at `pixels`)
    pixels: int = 0
    packed: bool = False  # padding-free rows (flash-attention): no dense mask, no padded logits
    flash: bool = False  # flash-attention on padded rows (hybrid models never pack): no dense mask
    tokens: int | None = None  # real tokens when packed (default: sequences x seq_len)

    @property
    def num_tokens(self) -> int:
        return self.tokens if self.tokens is not None else self.sequences * self.seq_len


def _zero_centred(text: TextArch) -> bool:
    """Qwen3.5's RMSNorm (weight stored as w - 1) scales in fp32: it keeps the fp32 normalised value
    where Qwen2/Qwen3's keeps its compute-dtype copy."""
    return text.gated_attention


def norm_bytes_per_row(text: TextArch, width: int, d: int) -> int:
    """One RMSNorm over `width` values, output included (it feeds the next linear)."""
    return (8 + d if _zero_centred(text) else 4 + 2 * d) * width + 4


def mlp_bytes_per_token(text: TextArch, d: int, routed: bool) -> int:
    """A dense gated MLP, or a routed one (router, the top-k experts' copies, a shared expert)."""
    if not routed:
        return 4 * d * text.intermediate_size
    moe = text.moe
    assert moe is not None
    h, k = text.hidden_size, moe.experts_per_token
    router = 4 * moe.num_experts + 12 * k + 4
    experts = k * (2 * d * h + 4 * d * moe.expert_intermediate_size + 24 + d)
    shared = (4 * d * moe.shared_intermediate_size + d * h + 2 * d) if moe.shared_intermediate_size else 0
    return router + experts + shared


def attention_bytes_per_token(text: TextArch, d: int) -> int:
    """A full-attention layer's token mixer: q, k, v, output, log-sum-exp; q/k norms; the output gate."""
    q, kv = text.q_dim, text.kv_dim
    out = d * (2 * q + 2 * kv) + 4 * text.num_heads
    if text.qk_norm:
        scale = 4 * (text.num_heads + text.num_kv_heads)
        out += (8 if _zero_centred(text) else 4 + d) * (q + kv) + scale
    if text.gated_attention:
        out += 3 * d * q
    return out


def linear_attention_bytes(text: TextArch, mb: MicroBatch, d: int) -> int:
    """One Gated DeltaNet layer's token mixer over the micro-batch's rows (never packed)."""
    la = text.linear
    assert la is not None
    v, dk, dv = la.value_heads, la.key_head_dim, la.value_head_dim
    channels = 2 * la.key_dim + la.value_dim
    rows, length = mb.sequences, mb.seq_len
    padded = math.ceil(length / DELTA_CHUNK) * DELTA_CHUNK
    per_token = 2 * channels * d + v * (d + 8) + 8 * v * (dk + 1) + 20 * v * dv + 4 * v
    per_padded = FP32 * v * (5 * DELTA_CHUNK + 4 * dv + 5 * dk + 4)
    per_chunk = FP32 * v * dk * dv
    padding_mask = 8 * length if rows > 1 else 0  # padding zeroed before the layer (int64 mask)
    per_row = length * per_token + padded * per_padded + (padded // DELTA_CHUNK) * per_chunk + padding_mask
    return rows * per_row + DELTA_CHUNK**2  # + the chunk's causal mask (bool)


def layer_bytes(text: TextArch, index: int, mb: MicroBatch, d: int) -> int:
    """What decoder layer `index` saves over the micro-batch (no checkpointing)."""
    t = mb.num_tokens
    norms = 2 * norm_bytes_per_row(text, text.hidden_size, d)
    mlp = mlp_bytes_per_token(text, d, index in text.moe_layers)
    if index in text.linear_layers:
        return t * (norms + mlp) + linear_attention_bytes(text, mb, d)
    return t * (norms + mlp + attention_bytes_per_token(text, d)) + mask_bytes(mb, d)


def vision_block_bytes_per_patch(vision: VisionArch, d: int, full_attention: bool = False) -> int:
    """What one vision block saves per patch (no checkpointing).

    A block attending over the whole image keeps q, k and v twice on the sdpa path (measured: the
    per-image split hands sdpa strided views it copies), a windowed block once."""
    h, i = vision.hidden_size, vision.intermediate_size
    qkv = 6 * h if full_attention else 3 * h
    attention = d * (qkv + h) + 4 * vision.num_heads  # q, k, v and the attention output
    if vision.gated_mlp:  # RMSNorms as in the decoder; gate, up, act, product
        return 2 * ((4 + 2 * d) * h + 4) + attention + 4 * d * i
    # LayerNorms (input, output, mean/rstd); fc1's output and the activation's output (Qwen2-VL's
    # QuickGELU, x sigmoid(1.702 x), keeps its sigmoid too; Qwen3's tanh GELU does not)
    mlp = (3 if vision.family == "qwen2_vl" else 2) * d * i
    return 2 * (2 * d * h + 8) + attention + mlp


def merger_bytes_per_patch(vision: VisionArch, d: int) -> int:
    """The patch merger (and each DeepStack merger): its norm, fc1 input, activation, fc2 input."""
    h = vision.hidden_size
    return ((4 + d) * h + 4 + 3 * d * h) if vision.gated_mlp else (4 * d * h + 8)


def vision_saved(vision: VisionArch, patches: int, d: int, checkpointed: bool) -> int:
    """The vision tower over `patches` patches: blocks, patch embedding input, mergers, position
    tables (rotary cos/sin; Qwen3's interpolated learned grid keeps 4 indices and 4 weights)."""
    if patches == 0:
        return 0
    h = vision.hidden_size
    if checkpointed:
        blocks = vision.depth * h * d
    else:
        full = vision.full_attention_blocks
        blocks = full * vision_block_bytes_per_patch(vision, d, True) + (vision.depth - full) * (
            vision_block_bytes_per_patch(vision, d)
        )
    mergers = (1 + vision.deepstack_mergers) * merger_bytes_per_patch(vision, d)
    rotary = 0 if checkpointed else 2 * 4 * (h // vision.num_heads)  # cos and sin per patch, fp32
    grid = (4 * 8 + 4 * FP32) if vision.num_position_embeddings else 0
    return patches * (blocks + vision.patch_dim * d + mergers + rotary + grid)


def patches_in(arch: Architecture, mb: MicroBatch) -> int:
    """Patches the vision tower sees: the images', or the 2 x 2-patch dummy a text-only batch runs."""
    if mb.images:
        return mb.images * arch.vision.patches(mb.pixels)
    return arch.vision.spatial_merge_size**2


def deepstack_bytes(arch: Architecture, mb: MicroBatch) -> int:
    """DeepStack's additions to the first decoder layers: the image positions' indices, twice each."""
    if not mb.images:
        return 0
    tokens = mb.images * arch.vision.patches(mb.pixels) // arch.vision.spatial_merge_size**2
    return arch.vision.deepstack_mergers * 16 * tokens


def mask_bytes(mb: MicroBatch, d: int) -> int:
    """sdpa's [B, 1, S, S] additive mask of a padded micro-batch (one copy per full-attention layer
    call); flash-attention (packed or not) and a single unpadded row need none."""
    return 0 if mb.packed or mb.flash or mb.sequences == 1 else mb.sequences * mb.seq_len**2 * d


def saved_activation_bytes(arch: Architecture, mb: MicroBatch, d: int, checkpointed: bool) -> int:
    """Everything autograd saves in one training forward + loss (the calibrated term).

    Checkpointed layers keep only their input: the rotary tables and the mask they are handed are
    rebuilt with the layer in backward (`recompute_bytes`).
    """
    text = arch.text
    t = mb.num_tokens
    if checkpointed:
        layers = text.num_layers * t * text.hidden_size * d
    else:
        layers = sum(layer_bytes(text, i, mb, d) for i in range(text.num_layers))
        layers += 2 * t * text.head_dim * d if text.full_attention_layers else 0  # cos and sin, shared
    final_norm = t * norm_bytes_per_row(text, text.hidden_size, d)  # its output is the head's input
    logits = mb.sequences * mb.response * (text.vocab_size * d + 16)  # + labels (int64), lse and entropy
    indices = 8 * t  # token ids the embedding's backward keeps
    vision = vision_saved(arch.vision, patches_in(arch, mb), d, checkpointed)
    return layers + final_norm + logits + indices + vision + deepstack_bytes(arch, mb)


def recompute_bytes(arch: Architecture, mb: MicroBatch, d: int) -> int:
    """Checkpointing's extra at its peak: one layer (or vision block) recomputed in full during backward."""
    text = arch.text
    kinds = {(i in text.linear_layers, i in text.moe_layers): i for i in range(text.num_layers)}
    text_layer = max(layer_bytes(text, i, mb, d) for i in kinds.values())
    images = patches_in(arch, mb)
    vision_block = images * vision_block_bytes_per_patch(
        arch.vision, d, arch.vision.full_attention_blocks > 0
    )
    return max(text_layer, vision_block)


def logits_buffers(arch: Architecture, mb: MicroBatch, d: int, *, backward: bool) -> int:
    """Logits alive beside the saved copy: the model's output (padded rows only), the gradient and
    its full-size slice buffer in backward, and two fp32 loss chunks."""
    rows, vocab = mb.sequences * mb.response, arch.text.vocab_size
    out = 0 if mb.packed else mb.sequences * (mb.response + 1) * vocab * d
    chunks = 2 * min(rows, LOSS_CHUNK_ROWS) * vocab * 4
    grads = (rows * vocab * d + out) if backward else 0
    return out + chunks + grads


def forward_transient_bytes(arch: Architecture, mb: MicroBatch, d: int) -> int:
    """A no-grad forward (log-prob passes): one layer's intermediates, two hidden states, the logits."""
    t = mb.num_tokens
    hidden = 2 * t * arch.text.hidden_size * d
    logits = mb.sequences * mb.response * arch.text.vocab_size * d
    return recompute_bytes(arch, mb, d) + hidden + logits + logits_buffers(arch, mb, d, backward=False)
