"""Load a checkpoint of a supported family (`models/families.py`) through transformers.

flash-attention 2 is used only where it can run (importable and on CUDA); everywhere else SDPA,
which is exact on CPU, so the tiny-model tests compare like with like.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sophiavl_cli.errors import UserError
from sophiavl_cli.models.families import Family, check_transformers_has, family_of

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedModel


def model_family(config: PretrainedConfig | dict[str, Any]) -> str:
    """The `model_type` of a supported family (`qwen2_5_vl`, `qwen3_vl`, ...) from a config or `config.json` dict."""
    return family_of(config).model_type


FLASH_ATTN_KERNEL = "flash_attn_2_cuda"


def pick_attn_implementation(device: str | torch.device) -> str:
    """flash_attention_2 when flash_attn is installed and the device is CUDA, else sdpa; an installed
    flash-attn whose CUDA extension does not load is a `UserError` here, before any weight loads
    (`infer` and `eval --backend hf` too, not only the training pre-flight)."""
    on_cuda = str(device).startswith("cuda")
    if not on_cuda or importlib.util.find_spec("flash_attn") is None:
        return "sdpa"
    check_flash_attn("cuda")
    return "flash_attention_2"


def check_flash_attn(device: str) -> None:
    """An installed flash-attn must load its CUDA extension on GPU runs (it is used whenever it imports)."""
    from sophiavl_cli.optional import load_kernel, version_of

    if device != "cuda" or importlib.util.find_spec("flash_attn") is None:
        return
    load_kernel(
        FLASH_ATTN_KERNEL,
        f"flash-attn {version_of('flash-attn') or ''}".rstrip(),
        "rebuild it against this torch (pip install --no-build-isolation --force-reinstall flash-attn) or "
        "pip uninstall flash-attn (training then runs SDPA on padded micro-batches)",
    )


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
    _quiet_on_cpu(attn_device or device)
    model = AutoModelForImageTextToText.from_pretrained(
        str(folder),
        dtype=dtype,
        attn_implementation=attn_implementation or pick_attn_implementation(attn_device or device),
    )
    return model.to(device).eval()


class _DropKernelFallbacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "falling back to its reference PyTorch implementation" not in record.getMessage()


_KERNEL_FALLBACKS = _DropKernelFallbacks()
KERNEL_LOGGER = "transformers.integrations.hub_kernels"  # where transformers warns (warning_once)


def _quiet_on_cpu(device: str | torch.device) -> None:
    """transformers warns four times per process that a Qwen3.5 model's Gated DeltaNet falls back to
    its reference PyTorch kernels. On CPU the fused kernels it names (GPU kernels) cannot be
    installed, so the warnings say nothing to act on and are dropped; on GPU they stay, and
    `sophiavl train` says it once before its workers start (`families.linear_attention_kernel_note`).
    """
    logger = logging.getLogger(KERNEL_LOGGER)
    if str(device).startswith("cpu") and _KERNEL_FALLBACKS not in logger.filters:
        logger.addFilter(_KERNEL_FALLBACKS)


def meta_vl_model(
    path: str | Path, *, dtype: torch.dtype, attn_device: str | torch.device = "cpu"
) -> PreTrainedModel:
    """The model of `path` with no storage (meta device): its structure, to shard before weights arrive."""
    import torch
    from transformers import AutoModelForImageTextToText

    config = _checked_config(Path(path))
    _quiet_on_cpu(attn_device)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(
            config, dtype=dtype, attn_implementation=pick_attn_implementation(attn_device)
        )
    return model.eval()


def checked_family(folder: Path) -> Family:
    """The family of the model folder `folder`, checked against the installed transformers: one
    line naming the folder and what to do when it has no config, an unsupported model type, or a
    family this transformers lacks (said before anything loads)."""
    import json

    if not (folder / "config.json").is_file():
        raise UserError(f"{folder}: no config.json; pass a model folder (see `sophiavl download`)")
    try:
        raw = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"{folder / 'config.json'}: unreadable ({exc}); re-download the model") from exc
    family = family_of(raw)
    check_transformers_has(family)
    return family


def _checked_config(folder: Path) -> PretrainedConfig:
    from transformers import AutoConfig

    checked_family(folder)  # before AutoConfig, whose error would not say what to do
    return AutoConfig.from_pretrained(str(folder))
