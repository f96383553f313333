"""Eval generation backends: greedy completions for a list of (chat text, images).

Both sit on `sophiavl_cli.generation` (stop ids, the explicit HF config, the offline vLLM engine).

- `hf`: transformers `generate`, one prompt at a time (no padding, so outputs do not depend on
  batch neighbours); for CPU, debugging and small runs.
- `vllm`: every prompt of a benchmark in ONE `LLM.generate` call, so vLLM's continuous batching
  keeps the GPU full (VLMEvalKit's per-sample calls leave most of that unused).

Both take the same prompt text (rendered by `VLProcessor.apply_chat_template`, one
`<|image_pad|>` per image), so the model sees the same tokens with either backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sophiavl_cli.generation.sampling import SamplingParams
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.optional import require

BACKENDS = ("hf", "vllm")


@dataclass(frozen=True)
class Request:
    """One prompt to complete: its cache key, rendered chat text and decoded images."""

    key: str
    text: str
    images: tuple[Image.Image, ...]


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class HFGenerator:
    """Greedy completions with transformers, one prompt at a time; the model loads on first use."""

    def __init__(self, model_path: Path, processor: VLProcessor) -> None:
        self.model_path = model_path
        self.processor = processor
        self._generator: Any = None

    def _load(self) -> Any:
        if self._generator is None:
            import torch

            from sophiavl_cli.generation.hf import HFGenerator as Generator
            from sophiavl_cli.generation.tokens import pad_token_id, stop_token_ids
            from sophiavl_cli.models.loading import load_vl_model

            device = _device()
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            stop = stop_token_ids(self.model_path, self.processor.tokenizer)
            self._generator = Generator(
                load_vl_model(self.model_path, dtype=dtype, device=device),
                stop_ids=stop,
                pad_id=pad_token_id(self.processor.tokenizer, stop),
            )
        return self._generator

    def generate(
        self, requests: Iterable[Request], *, max_new_tokens: int, on_result: Callable[[str, str], None]
    ) -> None:
        """Complete each request; `on_result(key, text)` right after each one (so it can be saved)."""
        generator = self._load()
        greedy = SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        for request in requests:
            encoded = self.processor.encode(request.text, list(request.images))
            inputs = generator.inputs([(encoded.input_ids, encoded.pixel_values, encoded.image_grid_thw)])
            (new_tokens,) = generator.new_tokens(inputs, generator.generate(inputs, greedy))
            on_result(request.key, self.processor.decode(new_tokens))


class VLLMGenerator:
    """One vLLM engine for the whole run; each benchmark's prompts go in ONE `generate` call.

    `sophiavl_cli.generation.vllm.VLLMGenerator` does the work (images resized by sophiavl's
    processor, a fixed KV cache and eager mode on CPU); this adapter feeds it chat text.
    """

    def __init__(
        self,
        model_path: Path,
        processor: VLProcessor,
        *,
        max_images: int,
        max_model_len: int | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        from sophiavl_cli.generation.tokens import stop_token_ids
        from sophiavl_cli.generation.vllm import VLLMGenerator as Generator

        self.processor = processor
        self.max_images = max(1, max_images)
        self.generator = Generator(
            model_path,
            processor,
            stop_ids=stop_token_ids(model_path, processor.tokenizer),
            on_cuda=_device() == "cuda",
            max_model_len=max_model_len,
            engine_options=engine_options,
        )

    @property
    def engine_args(self) -> dict[str, Any]:
        return self.generator.engine_args(self.max_images)

    def generate(
        self, requests: Iterable[Request], *, max_new_tokens: int, on_result: Callable[[str, str], None]
    ) -> None:
        """All requests in one call (continuous batching), then `on_result` for each, in order."""
        batch = list(requests)
        if not batch:
            return
        require("vllm", "the vllm eval backend")
        self.generator.start(self.max_images)
        tokenizer = self.processor.tokenizer
        prompts = [(list(tokenizer.encode(r.text, add_special_tokens=False)), list(r.images)) for r in batch]
        completions = self.generator.generate(
            prompts, SamplingParams(max_tokens=max_new_tokens, temperature=0.0)
        )
        for request, done in zip(batch, completions, strict=True):
            on_result(request.key, self.processor.decode(done.token_ids))
