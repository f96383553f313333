"""Activation bytes of one training forward: what autograd saves for backward, and what lives beside it.

Counted tensor by tensor from what transformers' Qwen2 decoder and Qwen2(.5)-VL vision tower save
(measured with `torch.autograd.graph.saved_tensors_hooks`; tests/test_plan_calibration.py checks
these formulas against that count on the built-in models). T tokens, compute dtype of d bytes:

  decoder layer   T [2((4 + 2d) h + 4) + d (2 q + 2 kv) + 4 H + 4 d I]
                  two RMSNorms (each: the fp32 upcast of its input, the normalised value, its output
                  feeding the next linear, one fp32 scale per token); attention's q, k, v and output;
                  the softmax log-sum-exp (fp32, per head); the gated MLP's gate, up, act and product
  checkpointed    T h d per layer (the layer's input) + one layer recomputed during its backward
  vision block    the same per patch with the vision widths (3 h_v for the fused qkv); Qwen2-VL's
                  LayerNorms and GELU MLP save d h_v + 8 per norm and 3 d I_v for the MLP
  logits          R rows x V, in d: the response logits the loss keeps (one copy), chunked to fp32

q = heads x head_dim, kv = kv_heads x head_dim, h hidden, I the MLP width, H heads, R the response
positions whose logits are computed. Without flash-attention the padded micro-batch adds the
[B, 1, S, S] attention mask (in d); flash-attention's packed rows need none.
"""

from __future__ import annotations

from dataclasses import dataclass

from sophiavl_cli.plan.architecture import Architecture, TextArch, VisionArch

LOSS_CHUNK_ROWS = 1024  # algo.losses.logprobs_and_entropy's default chunk: fp32 rows upcast at once


@dataclass(frozen=True)
class MicroBatch:
    """The shape of one forward: `sequences` rows padded to `seq_len`, `response` logit positions each."""

    sequences: int
    seq_len: int
    response: int
    images: int = 0  # images in the micro-batch (each at `pixels`)
    pixels: int = 0
    packed: bool = False  # padding-free rows (flash-attention): no dense mask
    tokens: int | None = None  # real tokens when packed (default: sequences x seq_len)

    @property
    def num_tokens(self) -> int:
        return self.tokens if self.tokens is not None else self.sequences * self.seq_len


def decoder_layer_bytes_per_token(text: TextArch, d: int) -> int:
    """What one decoder layer saves per token (no checkpointing)."""
    h = text.hidden_size
    norms = 2 * ((4 + 2 * d) * h + 4)
    attention = d * (2 * text.q_dim + 2 * text.kv_dim) + 4 * text.num_heads
    return norms + attention + 4 * d * text.intermediate_size


def vision_block_bytes_per_patch(vision: VisionArch, d: int, full_attention: bool = False) -> int:
    """What one vision block saves per patch (no checkpointing).

    A block attending over the whole image keeps q, k and v twice on the sdpa path (measured: the
    per-image split hands sdpa strided views it copies), a windowed block once."""
    h, i = vision.hidden_size, vision.intermediate_size
    qkv = 6 * h if full_attention else 3 * h
    attention = d * (qkv + h) + 4 * vision.num_heads  # q, k, v and the attention output
    if vision.gated_mlp:  # RMSNorms as in the decoder; gate, up, act, product
        return 2 * ((4 + 2 * d) * h + 4) + attention + 4 * d * i
    return 2 * (2 * d * h + 8) + attention + 3 * d * i  # LayerNorms (input, output, mean/rstd); fc1, GELU


def vision_saved(vision: VisionArch, patches: int, d: int, checkpointed: bool) -> int:
    """The vision tower over `patches` patches: blocks, patch embedding input, merger, rotary tables."""
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
    merger = ((4 + d) * h + 4 + 3 * d * h) if vision.gated_mlp else (4 * d * h + 8)
    rotary = 0 if checkpointed else 2 * 4 * (h // vision.num_heads)  # cos and sin per patch, fp32
    return patches * (blocks + vision.patch_dim * d + merger + rotary)


def patches_in(arch: Architecture, mb: MicroBatch) -> int:
    """Patches the vision tower sees: the images', or the 2 x 2-patch dummy a text-only batch runs."""
    if mb.images:
        return mb.images * arch.vision.patches(mb.pixels)
    return arch.vision.spatial_merge_size**2


def mask_bytes(mb: MicroBatch, d: int) -> int:
    """sdpa's [B, 1, S, S] additive mask of a padded micro-batch (one copy per layer call); packed
    rows (flash-attention) and a single unpadded row need none."""
    return 0 if mb.packed or mb.sequences == 1 else mb.sequences * mb.seq_len**2 * d


def saved_activation_bytes(arch: Architecture, mb: MicroBatch, d: int, checkpointed: bool) -> int:
    """Everything autograd saves for backward in one training forward + loss (the calibrated term).

    Checkpointed layers keep only their input: the rotary tables and the mask they are handed are
    rebuilt with the layer in backward (`recompute_bytes`).
    """
    text = arch.text
    t = mb.num_tokens
    if checkpointed:
        layers = text.num_layers * t * text.hidden_size * d
    else:
        per_layer = t * decoder_layer_bytes_per_token(text, d) + mask_bytes(mb, d)
        layers = text.num_layers * per_layer + 2 * t * text.head_dim * d  # + cos and sin, shared
    final_norm = t * ((4 + 2 * d) * text.hidden_size + 4)  # its output is the head's input (all rows)
    logits = mb.sequences * mb.response * (text.vocab_size * d + 16)  # + labels (int64), lse and entropy
    indices = 8 * t  # token ids the embedding's backward keeps
    vision = vision_saved(arch.vision, patches_in(arch, mb), d, checkpointed)
    return layers + final_norm + logits + indices + vision


def recompute_bytes(arch: Architecture, mb: MicroBatch, d: int) -> int:
    """Checkpointing's extra at its peak: one layer (or vision block) recomputed in full during backward."""
    text_layer = mb.num_tokens * decoder_layer_bytes_per_token(arch.text, d) + mask_bytes(mb, d)
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
