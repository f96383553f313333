"""A model's shape numbers, read from its `config.json`, and its exact parameter count per part.

Pure: a `config.json` dict in, frozen dataclasses out, no transformers or torch. Each family
(`model_type`) says how its config names the numbers and which tensors its modules hold, so the
counts equal `sum(p.numel())` of the transformers model built from the same config (the tests
check this on meta-device models of every shipped architecture). The decoder's matmul weights
come from `engine.observe.throughput.FlopsModel` (the MFU counter); biases, norms and the vision tower
are added here.

Families: `qwen2_vl` (Qwen2-VL: LayerNorm vision blocks with a GELU MLP) and `qwen2_5_vl`
(Qwen2.5-VL: RMSNorm vision blocks with a gated SiLU MLP, windowed attention); both use the
Qwen2 decoder (q/k/v with bias, o and the MLP without) and a 2x2 patch merger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sophiavl_cli.engine.observe.throughput import FlopsModel
from sophiavl_cli.errors import UserError

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class TextArch:
    """The language model (a Qwen2 decoder)."""

    num_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def flops(self) -> FlopsModel:
        return FlopsModel(
            num_layers=self.num_layers,
            hidden_size=self.hidden_size,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            vocab_size=self.vocab_size,
        )

    @property
    def layer_params(self) -> int:
        """One decoder layer: q/k/v/o and the gated MLP (FlopsModel), q/k/v biases, two RMSNorms."""
        return (
            self.flops.decoder_params // self.num_layers + self.q_dim + 2 * self.kv_dim + 2 * self.hidden_size
        )

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The LM head (none of its own when tied to the embedding) and the final norm."""
        return (0 if self.tie_word_embeddings else self.flops.head_params) + self.hidden_size

    @property
    def params(self) -> int:
        return self.embedding_params + self.num_layers * self.layer_params + self.head_params

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token in bf16 (keys and values of every layer)."""
        return 2 * self.num_layers * self.kv_dim * 2


@dataclass(frozen=True)
class VisionArch:
    """The vision tower: patch embedding, `depth` blocks, the patch merger."""

    family: str
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    patch_size: int
    temporal_patch_size: int
    spatial_merge_size: int
    in_channels: int
    full_attention_blocks: int  # blocks attending over the whole image (the rest over windows)

    @property
    def patch_dim(self) -> int:
        """Values per patch the processor emits (channels x frames x pixels)."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @property
    def gated_mlp(self) -> bool:
        return self.family == "qwen2_5_vl"

    @property
    def block_params(self) -> int:
        h, i = self.hidden_size, self.intermediate_size
        attention = h * 3 * h + 3 * h + h * h + h  # qkv and proj, with biases
        if self.gated_mlp:  # gate/up/down with biases, two RMSNorms
            return attention + 2 * (h * i + i) + i * h + h + 2 * h
        return attention + h * i + i + i * h + h + 4 * h  # fc1/fc2 with biases, two LayerNorms

    @property
    def merger_params(self) -> int:
        h, merged = self.hidden_size, self.hidden_size * self.spatial_merge_size**2
        norm = h if self.gated_mlp else 2 * h  # RMSNorm (2.5) or LayerNorm (2)
        return norm + merged * merged + merged + merged * self.out_hidden_size + self.out_hidden_size

    @property
    def params(self) -> int:
        return self.patch_dim * self.hidden_size + self.depth * self.block_params + self.merger_params

    def patches(self, pixels: int) -> int:
        """Patches of an image of `pixels` (w*h) pixels, the processor resizing it to whole merged tokens."""
        unit = self.patch_size * self.spatial_merge_size  # 28 px: one merged token per unit x unit
        tokens = max(1, pixels // unit**2)
        return tokens * self.spatial_merge_size**2


@dataclass(frozen=True)
class Architecture:
    """What the planner needs of a model, and where the numbers came from."""

    model_type: str
    text: TextArch
    vision: VisionArch
    source: str  # "config.json at <path>", "shipped numbers of <repo>"

    @property
    def params(self) -> int:
        return self.text.params + self.vision.params

    @property
    def root_params(self) -> int:
        """Parameters outside the sharded blocks (FSDP2's root unit): embedding, head, final norm,
        patch embedding and merger; gathered whole for a whole forward and backward."""
        return (
            self.params
            - self.text.num_layers * self.text.layer_params
            - self.vision.depth * self.vision.block_params
        )

    @property
    def largest_block_params(self) -> int:
        return max(self.text.layer_params, self.vision.block_params)

    @property
    def largest_tensor_params(self) -> int:
        """The biggest single tensor (the embedding or LM head): what one weight-sync cast copies."""
        t = self.text
        return max(t.embedding_params, t.hidden_size * t.intermediate_size)


def _get(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise UserError(f"{where}: config.json has no {key!r}; is this a Qwen2-VL / Qwen2.5-VL model folder?")
    return section[key]


def architecture_from_config(config: Mapping[str, Any], source: str) -> Architecture:
    """The numbers of a Qwen2-VL / Qwen2.5-VL `config.json` (flat layout or with a `text_config`)."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(
            f"{source}: model_type {model_type!r} is not one the planner knows ({', '.join(FAMILIES)}); "
            "plan with a model of those families"
        )
    text_cfg = {**config, **(config.get("text_config") or {})}
    vision_cfg = config.get("vision_config") or {}
    hidden = int(_get(text_cfg, "hidden_size", source))
    text = TextArch(
        num_layers=int(_get(text_cfg, "num_hidden_layers", source)),
        hidden_size=hidden,
        intermediate_size=int(_get(text_cfg, "intermediate_size", source)),
        num_heads=int(_get(text_cfg, "num_attention_heads", source)),
        num_kv_heads=int(text_cfg.get("num_key_value_heads") or text_cfg["num_attention_heads"]),
        vocab_size=int(_get(text_cfg, "vocab_size", source)),
        tie_word_embeddings=bool(
            config.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", False))
        ),
        max_position_embeddings=int(text_cfg.get("max_position_embeddings", 32768)),
    )
    # defaults: transformers' own for a key the file leaves out (the released files set them all)
    if model_type == "qwen2_5_vl":
        v_hidden, v_inter = (
            int(vision_cfg.get("hidden_size", 3584)),
            int(vision_cfg.get("intermediate_size", 3420)),
        )
        out = int(vision_cfg.get("out_hidden_size", 3584))
    else:  # Qwen2-VL: embed_dim is the width, hidden_size the merger's output, mlp_ratio the MLP
        v_hidden = int(vision_cfg.get("embed_dim", 1280))
        v_inter = int(v_hidden * float(vision_cfg.get("mlp_ratio", 4)))
        out = int(vision_cfg.get("hidden_size", 3584))
    depth = int(vision_cfg.get("depth", 32))
    vision = VisionArch(
        family=model_type,
        depth=depth,
        hidden_size=v_hidden,
        intermediate_size=v_inter,
        num_heads=int(vision_cfg.get("num_heads", 16)),
        out_hidden_size=out,
        patch_size=int(vision_cfg.get("patch_size", 14)),
        temporal_patch_size=int(vision_cfg.get("temporal_patch_size", 2)),
        spatial_merge_size=int(vision_cfg.get("spatial_merge_size", 2)),
        in_channels=int(vision_cfg.get("in_channels", 3)),
        full_attention_blocks=(
            len(vision_cfg.get("fullatt_block_indexes", [7, 15, 23, 31]))
            if model_type == "qwen2_5_vl"
            else depth
        ),
    )
    return Architecture(model_type=model_type, text=text, vision=vision, source=source)
