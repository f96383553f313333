"""A model's shape numbers, read from its `config.json`, and its exact parameter count per part.

Pure: a `config.json` dict in, frozen dataclasses out, no transformers or torch. Each family
(`model_type`) says how its config names the numbers and which tensors its modules hold, so the
counts equal `sum(p.numel())` of the transformers model built from the same config (the tests
check this on meta-device models of every shipped architecture and every built-in model). The
decoder's matmul weights come from `engine.observe.throughput.FlopsModel` (the MFU counter): its
attention, Gated DeltaNet, dense-MLP and routed-MLP pieces, with every expert counted here, since
all experts are resident in memory (the MFU counts only the routed top-k). Biases, norms, the
convolution and decay parameters of the linear-attention layers and the vision tower are added here.

Families:
- `qwen2_vl`, `qwen2_5_vl`: the Qwen2 decoder (q/k/v with bias, o and the MLP without); Qwen2-VL's
  vision blocks are LayerNorm + GELU MLP, Qwen2.5-VL's RMSNorm + gated SiLU MLP with windowed
  attention; patch 14, a 2 x 2 merger (28 px merged unit).
- `qwen3_vl`, `qwen3_vl_moe`: the Qwen3 decoder (no biases; RMSNorm on each head's q and k), MoE
  with `num_experts` experts of which `num_experts_per_tok` route each token; vision blocks as
  Qwen2-VL's, patch 16 with a bias (32 px merged unit), a learned position grid
  (`num_position_embeddings`), and one DeepStack merger per `deepstack_visual_indexes` entry whose
  output is added to the first decoder layers' hidden states at the image tokens.
- `qwen3_5`, `qwen3_5_moe`: hybrid decoders: `layer_types` marks Gated DeltaNet (linear-attention)
  layers, the rest are full attention with an output gate (q_proj twice as wide) and q/k norms;
  the MoE variant routes every layer and adds a shared expert with a sigmoid gate. The vision tower
  is Qwen3-VL's without DeepStack. The released checkpoints also carry a multi-token-prediction
  head (`mtp.*`, `mtp_num_hidden_layers`) that transformers does not build and sophiavl does not
  load, so it is not counted.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sophiavl_cli.engine.observe.throughput import FlopsModel, LinearAttentionShape, MoEShape
from sophiavl_cli.errors import UserError

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
QWEN2_FAMILIES = ("qwen2_vl", "qwen2_5_vl")
QWEN3_5_FAMILIES = ("qwen3_5", "qwen3_5_moe")
STATE_BYTES = 4  # the Gated DeltaNet recurrent state is kept in fp32 (`mamba_ssm_dtype` of the releases)


@dataclass(frozen=True)
class TextArch:
    """The language model: which layers are full or linear attention, dense or routed."""

    num_layers: int
    hidden_size: int
    intermediate_size: int  # the dense MLP width (unused, or 0, when every layer is routed)
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    max_position_embeddings: int
    qkv_bias: bool = False  # Qwen2: q/k/v projections carry a bias
    qk_norm: bool = False  # Qwen3, Qwen3.5: an RMSNorm over each head's q and k
    gated_attention: bool = False  # Qwen3.5: q_proj also yields a sigmoid gate on the attention output
    linear_layers: frozenset[int] = frozenset()  # Gated DeltaNet layers
    moe_layers: frozenset[int] = frozenset()  # routed MLPs
    linear: LinearAttentionShape | None = None
    moe: MoEShape | None = None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def full_attention_layers(self) -> int:
        """Softmax-attention layers: the only ones with an S^2 term and a KV cache."""
        return self.num_layers - len(self.linear_layers)

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
            gated_attention=self.gated_attention,
            moe=self.moe,
            linear=self.linear,
        )

    def linear_attention_extra_params(self) -> int:
        """A Gated DeltaNet layer beyond its projections: the depthwise causal convolution over q, k and
        v, the per-head decay (`A_log`) and step bias (`dt_bias`), the gated RMSNorm over a value head."""
        la = self.linear
        assert la is not None
        conv_channels = 2 * la.key_dim + la.value_dim
        return conv_channels * la.conv_kernel + 2 * la.value_heads + la.value_head_dim

    def layer_params(self, index: int) -> int:
        """Decoder layer `index`: its token mixer, its MLP (every expert), two RMSNorms."""
        f, h = self.flops, self.hidden_size
        if index in self.linear_layers:
            assert self.linear is not None
            mixer = self.linear.params(h) + self.linear_attention_extra_params()
        else:
            mixer = f.attention_params
            mixer += (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
            mixer += 2 * self.head_dim if self.qk_norm else 0
        if index in self.moe_layers:
            assert self.moe is not None
            mlp = f.moe_mlp_params(self.moe.num_experts)
        else:
            mlp = f.dense_mlp_params
        return mixer + mlp + 2 * h

    @property
    def decoder_params(self) -> int:
        return sum(self.layer_params(i) for i in range(self.num_layers))

    @property
    def largest_layer_params(self) -> int:
        return max(self.layer_params(i) for i in range(self.num_layers))

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """The LM head (none of its own when tied to the embedding) and the final norm."""
        return (0 if self.tie_word_embeddings else self.flops.head_params) + self.hidden_size

    @property
    def params(self) -> int:
        return self.embedding_params + self.decoder_params + self.head_params

    @property
    def largest_tensor_params(self) -> int:
        """The biggest single tensor: the embedding, a dense MLP matrix or a fused expert stack."""
        sizes = [self.embedding_params]
        if len(self.moe_layers) < self.num_layers:
            sizes.append(self.hidden_size * self.intermediate_size)
        if self.moe is not None:  # gate_up_proj of all experts, one parameter
            sizes.append(self.moe.num_experts * 2 * self.moe.expert_intermediate_size * self.hidden_size)
        return max(sizes)

    def linear_modules(self, index: int) -> dict[str, tuple[int, int]]:
        """The `nn.Linear` modules of layer `index` by name: (in, out) features. Fused experts are 3-D
        parameters, not linear layers; a shared expert's gate/up/down are."""
        h = self.hidden_size
        out: dict[str, tuple[int, int]] = {}
        if index in self.linear_layers:
            la = self.linear
            assert la is not None
            out |= {
                "in_proj_qkv": (h, 2 * la.key_dim + la.value_dim),
                "in_proj_z": (h, la.value_dim),
                "in_proj_b": (h, la.value_heads),
                "in_proj_a": (h, la.value_heads),
                "out_proj": (la.value_dim, h),
            }
        else:
            q_out = self.q_dim * (2 if self.gated_attention else 1)
            out |= {
                "q_proj": (h, q_out),
                "k_proj": (h, self.kv_dim),
                "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h),
            }
        width = self.intermediate_size
        if index in self.moe_layers:
            assert self.moe is not None
            width = self.moe.shared_intermediate_size
            if width:
                out["shared_expert_gate"] = (h, 1)
        if width:
            out |= {"gate_proj": (h, width), "up_proj": (h, width), "down_proj": (width, h)}
        return out

    @property
    def mlp_width(self) -> int:
        """The widest MLP a token goes through: the dense one, or its top-k experts and the shared one."""
        widths = [self.intermediate_size] if len(self.moe_layers) < self.num_layers else []
        if self.moe is not None:
            widths.append(
                self.moe.experts_per_token * self.moe.expert_intermediate_size
                + self.moe.shared_intermediate_size
            )
        return max(widths)

    @property
    def kv_bytes_per_token(self) -> int:
        """KV-cache bytes per token in bf16: keys and values of every full-attention layer."""
        return 2 * self.full_attention_layers * self.kv_dim * 2

    @property
    def state_bytes_per_sequence(self) -> int:
        """What each linear-attention layer keeps per sequence instead of a KV cache: the fp32 recurrent
        state (value heads x key dim x value dim) and the bf16 convolution window (kernel - 1 steps)."""
        la = self.linear
        if la is None:
            return 0
        recurrent = la.value_heads * la.key_head_dim * la.value_head_dim * STATE_BYTES
        conv = (2 * la.key_dim + la.value_dim) * (la.conv_kernel - 1) * 2
        return la.num_layers * (recurrent + conv)


@dataclass(frozen=True)
class VisionArch:
    """The vision tower: patch embedding, `depth` blocks, the patch merger (and DeepStack mergers)."""

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
    num_position_embeddings: int = 0  # Qwen3-VL / Qwen3.5: the learned position grid, interpolated
    deepstack_mergers: int = 0  # Qwen3-VL: mergers whose features feed the first decoder layers

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
    def merged_width(self) -> int:
        return self.hidden_size * self.spatial_merge_size**2

    @property
    def merger_params(self) -> int:
        h, merged = self.hidden_size, self.merged_width
        norm = h if self.gated_mlp else 2 * h  # RMSNorm (2.5) or LayerNorm (2, 3, 3.5)
        return norm + merged * merged + merged + merged * self.out_hidden_size + self.out_hidden_size

    @property
    def deepstack_merger_params(self) -> int:
        """A DeepStack merger: a LayerNorm over the merged 2 x 2 group, then the merger's two linears."""
        merged = self.merged_width
        return 2 * merged + merged * merged + merged + merged * self.out_hidden_size + self.out_hidden_size

    @property
    def patch_embed_params(self) -> int:
        bias = 0 if self.family in QWEN2_FAMILIES else self.hidden_size  # Qwen3's Conv3d has a bias
        return self.patch_dim * self.hidden_size + bias

    @property
    def params(self) -> int:
        return (
            self.patch_embed_params
            + self.num_position_embeddings * self.hidden_size
            + self.depth * self.block_params
            + self.merger_params
            + self.deepstack_mergers * self.deepstack_merger_params
        )

    @property
    def merged_unit(self) -> int:
        """Side in pixels of one merged vision token: 28 (patch 14) or 32 (patch 16)."""
        return self.patch_size * self.spatial_merge_size

    def patches(self, pixels: int) -> int:
        """Patches of an image of `pixels` (w*h) pixels, the processor resizing it to whole merged tokens."""
        tokens = max(1, pixels // self.merged_unit**2)
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
        patch and position embeddings, the mergers; gathered whole for a whole forward and backward."""
        return self.params - self.text.decoder_params - self.vision.depth * self.vision.block_params

    @property
    def largest_block_params(self) -> int:
        return max(self.text.largest_layer_params, self.vision.block_params)

    @property
    def largest_tensor_params(self) -> int:
        """The biggest single tensor: what one weight-sync cast copies."""
        return self.text.largest_tensor_params


def _get(section: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in section:
        raise UserError(
            f"{where}: config.json has no {key!r}; is this a folder of a model family sophiavl trains?"
        )
    return section[key]


def _layer_sets(
    model_type: str, text_cfg: Mapping[str, Any], layers: int
) -> tuple[frozenset[int], frozenset[int]]:
    """(Gated DeltaNet layers, routed-MLP layers) by index, as transformers builds them."""
    linear: frozenset[int] = frozenset()
    if model_type in QWEN3_5_FAMILIES:
        kinds = text_cfg.get("layer_types")
        if kinds is None:  # transformers' default: full attention every `full_attention_interval` layers
            interval = int(text_cfg.get("full_attention_interval", 4))
            kinds = [
                "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(layers)
            ]
        linear = frozenset(i for i, kind in enumerate(kinds) if kind == "linear_attention")
    moe: frozenset[int] = frozenset()
    if model_type == "qwen3_5_moe":
        moe = frozenset(range(layers))
    elif model_type == "qwen3_vl_moe" and int(text_cfg.get("num_experts", 0) or 0) > 0:
        step = int(text_cfg.get("decoder_sparse_step", 1) or 1)
        dense = set(text_cfg.get("mlp_only_layers") or [])
        moe = frozenset(i for i in range(layers) if i not in dense and (i + 1) % step == 0)
    return linear, moe


def _text_arch(
    model_type: str, config: Mapping[str, Any], text_cfg: Mapping[str, Any], source: str
) -> TextArch:
    layers = int(_get(text_cfg, "num_hidden_layers", source))
    hidden = int(_get(text_cfg, "hidden_size", source))
    heads = int(_get(text_cfg, "num_attention_heads", source))
    linear_layers, moe_layers = _layer_sets(model_type, text_cfg, layers)
    qwen3_5 = model_type in QWEN3_5_FAMILIES
    linear = None
    if linear_layers:
        linear = LinearAttentionShape(
            num_layers=len(linear_layers),
            key_heads=int(text_cfg.get("linear_num_key_heads", 16)),
            value_heads=int(text_cfg.get("linear_num_value_heads", 32)),
            key_head_dim=int(text_cfg.get("linear_key_head_dim", 128)),
            value_head_dim=int(text_cfg.get("linear_value_head_dim", 128)),
            conv_kernel=int(text_cfg.get("linear_conv_kernel_dim", 4)),
        )
    moe = None
    if moe_layers:
        moe = MoEShape(
            num_layers=len(moe_layers),
            num_experts=int(_get(text_cfg, "num_experts", source)),
            experts_per_token=int(_get(text_cfg, "num_experts_per_tok", source)),
            expert_intermediate_size=int(_get(text_cfg, "moe_intermediate_size", source)),
            shared_intermediate_size=int(text_cfg.get("shared_expert_intermediate_size", 0) or 0),
        )
    dense_needed = len(moe_layers) < layers
    return TextArch(
        num_layers=layers,
        hidden_size=hidden,
        intermediate_size=int(
            _get(text_cfg, "intermediate_size", source)
            if dense_needed
            else text_cfg.get("intermediate_size", 0)
        ),
        num_heads=heads,
        num_kv_heads=int(text_cfg.get("num_key_value_heads") or heads),
        head_dim=int(text_cfg.get("head_dim") or hidden // heads),
        vocab_size=int(_get(text_cfg, "vocab_size", source)),
        tie_word_embeddings=bool(
            config.get("tie_word_embeddings", text_cfg.get("tie_word_embeddings", False))
        ),
        max_position_embeddings=int(text_cfg.get("max_position_embeddings", 32768)),
        qkv_bias=model_type in QWEN2_FAMILIES,
        qk_norm=model_type not in QWEN2_FAMILIES,
        gated_attention=qwen3_5,
        linear_layers=linear_layers,
        moe_layers=moe_layers,
        linear=linear,
        moe=moe,
    )


def _vision_arch(model_type: str, vision_cfg: Mapping[str, Any]) -> VisionArch:
    # defaults: transformers' own for a key the file leaves out (the released files set them all)
    if model_type == "qwen2_5_vl":
        hidden, inter = (
            int(vision_cfg.get("hidden_size", 3584)),
            int(vision_cfg.get("intermediate_size", 3420)),
        )
        out = int(vision_cfg.get("out_hidden_size", 3584))
    elif (
        model_type == "qwen2_vl"
    ):  # embed_dim is the width, hidden_size the merger's output, mlp_ratio the MLP
        hidden = int(vision_cfg.get("embed_dim", 1280))
        inter = int(hidden * float(vision_cfg.get("mlp_ratio", 4)))
        out = int(vision_cfg.get("hidden_size", 3584))
    else:  # Qwen3-VL, Qwen3.5
        hidden, inter = (
            int(vision_cfg.get("hidden_size", 1152)),
            int(vision_cfg.get("intermediate_size", 4304)),
        )
        out = int(vision_cfg.get("out_hidden_size", 3584))
    depth = int(vision_cfg.get("depth", 32 if model_type in QWEN2_FAMILIES else 27))
    qwen2 = model_type in QWEN2_FAMILIES
    deepstack = (
        len(vision_cfg.get("deepstack_visual_indexes", (8, 16, 24)))
        if model_type.startswith("qwen3_vl")
        else 0
    )
    return VisionArch(
        family=model_type,
        depth=depth,
        hidden_size=hidden,
        intermediate_size=inter,
        num_heads=int(vision_cfg.get("num_heads", 16)),
        out_hidden_size=out,
        patch_size=int(vision_cfg.get("patch_size", 14 if qwen2 else 16)),
        temporal_patch_size=int(vision_cfg.get("temporal_patch_size", 2)),
        spatial_merge_size=int(vision_cfg.get("spatial_merge_size", 2)),
        in_channels=int(vision_cfg.get("in_channels", vision_cfg.get("in_chans", 3))),
        full_attention_blocks=(
            len(vision_cfg.get("fullatt_block_indexes", [7, 15, 23, 31]))
            if model_type == "qwen2_5_vl"
            else depth
        ),
        num_position_embeddings=0 if qwen2 else int(vision_cfg.get("num_position_embeddings", 2304)),
        deepstack_mergers=deepstack,
    )


def architecture_from_config(config: Mapping[str, Any], source: str) -> Architecture:
    """The numbers of a `config.json` of a family sophiavl trains (flat layout or with a `text_config`)."""
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise UserError(
            f"{source}: model_type {model_type!r} is not one the planner knows ({', '.join(FAMILIES)}); "
            "plan with a model of those families"
        )
    text_cfg = {k: v for k, v in config.items() if k not in ("text_config", "vision_config")}
    text_cfg |= config.get("text_config") or {}
    text = _text_arch(model_type, config, text_cfg, source)
    vision = _vision_arch(model_type, config.get("vision_config") or {})
    return Architecture(model_type=model_type, text=text, vision=vision, source=source)
