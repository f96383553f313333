"""The rollout interface every generation backend implements (hf now, vLLM next).

A backend lives inside a worker (one per rank), receives plain prompts (token ids with image
placeholders already expanded, numpy pixels) and returns plain token ids, so the driver and the
trainer never depend on which engine generated. After every optimizer step the worker streams
the policy's full tensors into it with `sync_weights`, named as in transformers 5 state dicts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from sophiavl_cli.generation.sampling import SamplingParams


@dataclass(frozen=True)
class RolloutPrompt:
    """One prompt to complete `n` times; `index` is its position in the step's batch.

    `pixel_values` is float32 numpy inside a process; between the driver and the workers it is the
    policy's compute dtype (`to_wire` / `from_wire`).
    """

    index: int
    prompt_ids: list[int]
    pixel_values: np.ndarray | WirePatches | None = None  # float32 [patches, patch_dim]
    image_grid_thw: np.ndarray | None = None  # int64 [images, 3]


_WIRE_KEYS = itertools.count()


@dataclass(frozen=True)
class WirePatches:
    """A prompt's patches as they cross Ray, in the policy's compute dtype.

    16-bit dtypes travel as their raw bits in numpy (numpy has no bf16, and numpy arrays cross Ray
    zero-copy where torch tensors are pickled). `key` names this prompt's patches for the step: a
    rank that generated the prompt keeps them, and its training sequences then carry `HeldPatches`.
    """

    bits: np.ndarray  # [patches, patch_dim]: float32, or int16 holding bf16 / fp16 values
    dtype: str  # the torch dtype's name: "float32", "bfloat16", "float16"
    key: int


@dataclass(frozen=True)
class HeldPatches:
    """The patches of the prompt `key`, which the receiving rank already holds from `generate`."""

    key: int


def patches_to_wire(pixel_values: np.ndarray | None, dtype: torch.dtype | None) -> WirePatches | None:
    """Image patches as they cross Ray: in the policy's compute dtype (bf16 on GPU; None: float32).

    float32 patches are 4 bytes a value; the model casts them to its compute dtype at its first
    layer anyway, so sending that dtype changes nothing it computes and halves the bytes.
    """
    if pixel_values is None:
        return None
    dtype = dtype or torch.float32
    if dtype == torch.float32:
        bits = np.ascontiguousarray(pixel_values, dtype=np.float32)
    else:
        bits = torch.from_numpy(np.ascontiguousarray(pixel_values)).to(dtype).view(torch.int16).numpy()
    return WirePatches(bits, str(dtype).removeprefix("torch."), next(_WIRE_KEYS))


def patches_from_wire(pixel_values: WirePatches) -> np.ndarray:
    """The float32 numpy patches a worker computes with (bf16 values are exact in float32)."""
    if pixel_values.dtype == "float32":
        return pixel_values.bits
    dtype = getattr(torch, pixel_values.dtype)
    return torch.from_numpy(pixel_values.bits).view(dtype).float().numpy()


@dataclass(frozen=True)
class RolloutOutput:
    """One completion. `response_ids` ends with the EOS token unless it was cut at max_tokens."""

    prompt_index: int
    sample_index: int
    response_ids: list[int]
    logprobs: np.ndarray | None = None  # float32 [len(response_ids)], temperature-scaled sampling logprobs
    truncated: bool = False  # stopped by max_tokens rather than EOS


@runtime_checkable
class RolloutEngine(Protocol):
    """A generation backend living in one worker."""

    def generate(
        self, prompts: list[RolloutPrompt], n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        """`n` completions per prompt, ordered by (prompt position, sample). Same seed, same outputs."""
        ...

    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load full (unsharded) policy tensors, names as in the transformers state dict."""
        ...


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that is a function of `parts` only, e.g. (run seed, step) or (step seed, prompt).

    The driver passes `derive_seed(run_seed, step)` to `generate`, and a backend seeds prompt `i`
    with `derive_seed(that, i)`: the tokens a prompt gets depend neither on the rank nor on the
    other prompts of the batch, so a resumed run (or one on another world size) samples the same.
    """
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])
