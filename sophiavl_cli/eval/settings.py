"""What one `sophiavl eval` run is asked to do (`EvalSettings`), shared by the runner and its shards."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sophiavl_cli.eval.benchmarks.base import Benchmark
from sophiavl_cli.eval.judge import JudgeSettings

PROMPTS = ("default", "sophiavl-r1")
MIN_PIXELS = 1280 * 28 * 28  # the paper's evaluation bounds
MAX_PIXELS = 16384 * 28 * 28


@dataclass(frozen=True)
class EvalSettings:
    """Everything one `sophiavl eval` run needs (the CLI builds it from flags)."""

    model: str
    benchmarks: tuple[Benchmark, ...]
    output_dir: Path
    data: Path | None = None
    split: str | None = None
    backend: str = "hf"
    prompt: str = "default"
    max_new_tokens: int = 2048
    min_pixels: int = MIN_PIXELS
    max_pixels: int = MAX_PIXELS
    limit: int | None = None
    judge: JudgeSettings | None = None
    max_model_len: int | None = None
    vllm_options: Mapping[str, Any] | None = None  # extra `vllm.LLM` arguments (tests, tuning)
    lenient: bool = False  # score with our documented departures from the official rules
    shards: int | None = None  # generation processes (None: one per GPU group with vllm, else 1)
    tensor_parallel: int = 1  # GPUs per vLLM engine

    def generation_settings(self) -> dict[str, Any]:
        """The settings that change what the model generates (part of every cache key)."""
        return {
            "max_new_tokens": self.max_new_tokens,
            "min_pixels": self.min_pixels,
            "max_pixels": self.max_pixels,
            "temperature": 0.0,
        }
