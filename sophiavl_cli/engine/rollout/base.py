"""The rollout interface every generation backend implements (hf now, vLLM next).

A backend lives inside a worker (one per rank), receives plain prompts (token ids with image
placeholders already expanded, numpy pixels) and returns plain token ids, so the driver and the
trainer never depend on which engine generated. After every optimizer step the worker streams
the policy's full tensors into it with `sync_weights`, named as in transformers 5 state dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from sophiavl_cli.generation.sampling import SamplingParams


@dataclass(frozen=True)
class RolloutPrompt:
    """One prompt to complete `n` times; `index` is its position in the step's batch."""

    index: int
    prompt_ids: list[int]
    pixel_values: np.ndarray | None = None  # float32 [patches, patch_dim]
    image_grid_thw: np.ndarray | None = None  # int64 [images, 3]


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
