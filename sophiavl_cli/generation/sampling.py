"""How to sample, stated in full by the caller (never filled in from a model folder's defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. temperature 0 means greedy; top_k < 1 means no top-k cut."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    return_logprobs: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
