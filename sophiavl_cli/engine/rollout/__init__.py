"""Rollout backends behind one interface (`RolloutEngine`); `build_rollout_engine` picks one."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sophiavl_cli.engine.rollout.base import (
    RolloutEngine,
    RolloutOutput,
    RolloutPrompt,
    SamplingParams,
    derive_seed,
)
from sophiavl_cli.errors import UserError
from sophiavl_cli.optional import require

if TYPE_CHECKING:
    import torch

    from sophiavl_cli.config.recipe import Recipe
    from sophiavl_cli.config.worker import RolloutConfig

BACKENDS = ("hf", "vllm")


def check_backend(cfg: RolloutConfig) -> None:
    """Fail before any process starts when the chosen backend cannot run here.

    vLLM is imported lazily (its import alone takes seconds); without it the message names the
    extra that installs it.
    """
    if cfg.backend == "hf":
        return
    if cfg.backend == "vllm":
        require("vllm", "worker.rollout.backend=vllm")
        return
    raise UserError(
        f"worker.rollout.backend={cfg.backend!r}: unknown backend; choose one of {', '.join(BACKENDS)}"
    )


def build_rollout_engine(
    recipe: Recipe,
    model_dir: str,
    *,
    dtype: torch.dtype,
    device: torch.device,
    eos_token_ids: list[int],
    pad_token_id: int,
) -> RolloutEngine:
    """The rollout engine for `worker.rollout.backend`, built inside a worker from the model folder.

    hf: a full-weight transformers copy of the policy; vllm: a colocated vLLM engine (which loads
    the folder itself, so no transformers copy is made).
    """
    cfg = recipe.worker.rollout
    check_backend(cfg)
    if cfg.backend == "vllm":
        from sophiavl_cli.engine.rollout.vllm import VLLMRollout

        return VLLMRollout.from_recipe(
            recipe, model_dir, eos_token_ids=eos_token_ids, dtype=dtype, device=device
        )
    from sophiavl_cli.engine.rollout.hf import HFRollout
    from sophiavl_cli.models.loading import load_vl_model

    model = load_vl_model(model_dir, dtype=dtype, device=device)
    return HFRollout(model, eos_token_ids=eos_token_ids, pad_token_id=pad_token_id)


__all__ = [
    "RolloutEngine",
    "RolloutOutput",
    "RolloutPrompt",
    "SamplingParams",
    "build_rollout_engine",
    "check_backend",
    "derive_seed",
]
