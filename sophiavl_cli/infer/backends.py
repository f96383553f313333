"""The two generation backends of `sophiavl infer`, over `sophiavl_cli.generation`.

Both take rendered prompts (one `<|image_pad|>` per image) plus PIL images and return token ids,
so the prompt, the images' pixel bounds and the answer parsing are shared, and on the built-in
tiny model the two give the same greedy tokens (tests/test_infer.py checks it).

- `hf`: sophiavl's processor expands each image placeholder and computes the pixels; requests go
  through `HFGenerator` in left-padded batches of `batch_size`.
- `vllm`: the whole batch in one `VLLMGenerator.generate` call.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from PIL import Image

from sophiavl_cli.errors import UserError
from sophiavl_cli.generation.sampling import SamplingParams

if TYPE_CHECKING:
    from sophiavl_cli.models.processing import EncodedPrompt, VLProcessor

Prompt = tuple[str, list[Image.Image]]  # (rendered chat prompt, its images in placeholder order)


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding. Greedy (temperature 0) by default, as the released inference script."""

    max_new_tokens: int = 2048
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_new_tokens <= 0:
            raise UserError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
        if self.temperature < 0:
            raise UserError(f"--temperature {self.temperature}: must be 0 (greedy) or positive")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def sampling(self) -> SamplingParams:
        """The same decoding for both backends: no top-k cut, top_p only when sampling."""
        return SamplingParams(
            max_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=1.0 if self.greedy else self.top_p,
        )


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


def _without_stop(tokens: list[int], stopped: bool) -> tuple[list[int], str]:
    """Tokens without the end-of-turn token, and why generation stopped."""
    return (tokens[:-1], "stop") if stopped else (tokens, "length")


# --------------------------------------------------------------------------- transformers


class HFBackend:
    """`HFGenerator`, left-padded batches of `batch_size` prompts."""

    name = "hf"

    def __init__(
        self, model_path: Path, processor: VLProcessor, *, batch_size: int, device: str | None
    ) -> None:
        import torch

        from sophiavl_cli.generation.hf import HFGenerator
        from sophiavl_cli.generation.tokens import pad_token_id, stop_token_ids
        from sophiavl_cli.models.loading import load_vl_model

        self.device = device or _default_device()
        dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        stop = stop_token_ids(model_path, processor.tokenizer)
        self.generator = HFGenerator(
            load_vl_model(model_path, dtype=dtype, device=self.device),
            stop_ids=stop,
            pad_id=pad_token_id(processor.tokenizer, stop),
        )
        self.processor = processor
        self.batch_size = batch_size

    def generate(self, prompts: list[Prompt], settings: GenerationSettings) -> list[Generated]:
        out: list[Generated] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            encoded = [self.processor.encode(text, images) for text, images in chunk]
            out.extend(self._generate_batch(encoded, settings))
        return out

    def _generate_batch(self, encoded: list[EncodedPrompt], settings: GenerationSettings) -> list[Generated]:
        from sophiavl_cli.generation.hf import trim_at_stop

        generator = self.generator
        inputs = generator.inputs([(e.input_ids, e.pixel_values, e.image_grid_thw) for e in encoded])
        start = time.perf_counter()
        result = generator.generate(inputs, settings.sampling, seed=settings.seed)
        seconds = (time.perf_counter() - start) / len(encoded)
        results = []
        for enc, row in zip(encoded, generator.new_tokens(inputs, result), strict=True):
            tokens, reason = _without_stop(*trim_at_stop(row, generator.stop_ids))
            results.append(Generated(tokens, len(enc.input_ids), enc.num_image_tokens, reason, seconds))
        return results

    def close(self) -> None:
        self.generator = None  # type: ignore[assignment]


# --------------------------------------------------------------------------- vLLM


class VLLMBackend:
    """`VLLMGenerator`: every call is one `LLM.generate` over the whole batch."""

    name = "vllm"

    def __init__(self, model_path: Path, processor: VLProcessor, *, device: str | None) -> None:
        from sophiavl_cli.generation.tokens import stop_token_ids
        from sophiavl_cli.generation.vllm import VLLMGenerator
        from sophiavl_cli.optional import require

        require("vllm", "--backend vllm")
        self.processor = processor
        self.device = device or _default_device()
        self.generator = VLLMGenerator(
            model_path,
            processor,
            stop_ids=stop_token_ids(model_path, processor.tokenizer),
            on_cuda=self.device.startswith("cuda"),
        )

    def generate(self, prompts: list[Prompt], settings: GenerationSettings) -> list[Generated]:
        tokenizer = self.processor.tokenizer
        requests = [
            (list(tokenizer.encode(text, add_special_tokens=False)), images) for text, images in prompts
        ]
        completions = self.generator.generate(requests, settings.sampling, seed=settings.seed)
        results = []
        for (_, images), done in zip(prompts, completions, strict=True):
            image_tokens = sum(self.processor.num_image_tokens(im.height, im.width) for im in images)
            tokens, reason = _without_stop(done.token_ids, done.stopped)
            results.append(Generated(tokens, done.prompt_tokens, image_tokens, reason, done.seconds))
        return results

    def close(self) -> None:
        self.generator.close()
