"""Load a Qwen2-VL-family checkpoint for training or inference through transformers.

flash-attention 2 is used only where it can run (importable and on CUDA); everywhere else SDPA,
which is exact on CPU, so the tiny-model tests compare like with like.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sophiavl_cli.errors import UserError

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel

ModelFamily = Literal["qwen2_5_vl", "qwen2_vl"]
FAMILIES: tuple[ModelFamily, ...] = ("qwen2_5_vl", "qwen2_vl")


def model_family(config: PretrainedConfig | dict[str, Any]) -> ModelFamily:
    """`qwen2_5_vl` or `qwen2_vl` from a config object or `config.json` dict."""
    model_type = config.get("model_type") if isinstance(config, dict) else getattr(config, "model_type", None)
    if model_type not in FAMILIES:
        raise UserError(
            f"model type {model_type!r} is not supported; sophiavl trains Qwen2-VL and Qwen2.5-VL models "
            f"({', '.join(FAMILIES)})"
        )
    return model_type  # type: ignore[return-value]


def pick_attn_implementation(device: str | torch.device) -> str:
    """flash_attention_2 when flash_attn imports and the device is CUDA, else sdpa."""
    on_cuda = str(device).startswith("cuda")
    return "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") is not None else "sdpa"


def load_vl_model(
    path: str | Path,
    *,
    dtype: torch.dtype,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
    attn_device: str | torch.device | None = None,
) -> PreTrainedModel:
    """The `*ForConditionalGeneration` model in `path`, in `dtype`, on `device`, in eval mode.

    `attn_device` picks the attention kernel when the model will run elsewhere than it loads
    (loaded on the host, sharded onto a GPU).
    """
    from transformers import AutoModelForImageTextToText

    folder = Path(path)
    _checked_config(folder)
    model = AutoModelForImageTextToText.from_pretrained(
        str(folder),
        dtype=dtype,
        attn_implementation=attn_implementation or pick_attn_implementation(attn_device or device),
    )
    return model.to(device).eval()


def meta_vl_model(
    path: str | Path, *, dtype: torch.dtype, attn_device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """The model of `path` with no storage (meta device): its structure, to shard before weights arrive."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = _checked_config(Path(path))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=pick_attn_implementation(attn_device)
        )
    return model.eval()


def _checked_config(folder: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json; pass a model folder (see `sophiavl download`)")
    config = AutoConfig.from_pretrained(str(folder))
    model_family(config)
    return config
