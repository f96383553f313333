"""What this machine can do for sophiavl, row by row, with a verdict each.

Kept apart from the CLI so tests and `train` can reuse the checks. Values of secrets are never
read into a row: only whether they are set.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Literal

from sophiavl_cli.optional import version_of

Verdict = Literal["ok", "warn", "missing", "info"]


@dataclass(frozen=True)
class Check:
    name: str
    value: str
    verdict: Verdict
    advice: str = ""


def _torch_rows() -> list[Check]:
    """torch's version from package metadata; torch itself is imported only where a GPU may be.

    Importing torch takes seconds; on a machine without a GPU driver there is nothing it could
    add to the CUDA row.
    """
    version = version_of("torch")
    if version is None:
        return [Check("torch", "not installed", "missing", "pip install torch==2.13.0 (CPU) or a CUDA build")]
    rows = [Check("torch", version, "ok")]
    if _gpu_driver_present():
        import torch

        if torch.cuda.is_available():
            count = torch.cuda.device_count()
            name = torch.cuda.get_device_name(0)
            rows.append(Check("CUDA", f"{torch.version.cuda}, {count} GPU(s): {name}", "ok"))
            return rows
    rows.append(
        Check(
            "CUDA",
            "no GPU visible",
            "info",
            "training runs on CPU (gloo, hf rollout): fine for the tiny model",
        )
    )
    return rows


def _gpu_driver_present() -> bool:
    """Whether an NVIDIA (or ROCm) kernel driver is loaded: the cheap test before asking torch."""
    return any(os.path.exists(path) for path in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd"))


def _package_row(dist: str, need: str, advice: str) -> Check:
    version = version_of(dist)
    if version:
        return Check(dist, version, "ok")
    return Check(dist, "not installed", "missing" if need == "core" else "info", advice)


def _env_row(var: str, needed_for: str, secret: bool = False) -> Check:
    value = os.environ.get(var)
    if not value:
        return Check(var, "not set", "info", needed_for)
    return Check(var, "set" if secret else value, "ok")


def run_checks() -> list[Check]:
    rows = [
        Check(
            "Python",
            platform.python_version(),
            "ok" if tuple(map(int, platform.python_version_tuple()[:2])) >= (3, 11) else "missing",
        )
    ]
    rows += _torch_rows()
    rows += [
        _package_row("transformers", "core", "pip install 'transformers>=5,<6'"),
        _package_row("ray", "core", "pip install 'ray[default]'"),
        _package_row("vllm", "gpu", "optional: pip install 'sophiavl[gpu]' for vLLM rollouts and serving"),
        _package_row(
            "flash-attn",
            "gpu",
            "optional, a separate build: pip install --no-build-isolation flash-attn (README, GPU section)",
        ),
        _package_row(
            "matplotlib", "curves", "optional: pip install 'sophiavl[curves]' for PNG training curves"
        ),
        _env_row("OPENAI_API_URL", "unset: training starts the built-in reward server"),
        _env_row("OPENAI_API_KEY", "unset: requests go without a bearer key", secret=True),
        _env_row("REWARD_MODEL", "unset: the recipe's reward.thinking.model is used"),
    ]
    from huggingface_hub import constants

    rows.append(Check("HF cache", str(constants.HF_HUB_CACHE), "info"))
    offline = bool(constants.HF_HUB_OFFLINE)
    rows.append(
        Check(
            "HF offline mode",
            "on" if offline else "off",
            "info",
            "downloads are refused; only cached models and data are used" if offline else "",
        )
    )
    return rows
