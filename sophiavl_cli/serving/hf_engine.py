"""The model behind the built-in reward server: transformers `generate` on one Qwen VL model, any family.

Prompts go through sophiavl's own processor (`models.processing.VLProcessor`), so the RM sees the
same image tokens here as under training. The app batches concurrent requests (`generate_batch`:
one left-padded `generate`, each row sampled from its own seeded generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import LogitsProcessorList

from sophiavl_cli.data.length import capped_token_count
from sophiavl_cli.errors import UserError
from sophiavl_cli.generation.hf import HFGenerator, trim_at_stop
from sophiavl_cli.generation.row_sampling import RowSampling
from sophiavl_cli.generation.tokens import pad_token_id, stop_token_ids
from sophiavl_cli.models.loading import load_vl_model
from sophiavl_cli.models.processing import EncodedPrompt, VLProcessor
from sophiavl_cli.serving.chat_request import ChatRequest, RequestError
from sophiavl_cli.serving.choice_constraint import ChoiceLogitsProcessor, ChoiceTrie, match_choice

DType = Literal["auto", "bf16", "fp16", "fp32"]
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" | "length"


def torch_dtype(dtype: str, device: str) -> torch.dtype:
    """`auto` is bf16 on CUDA and fp32 elsewhere (CPU bf16 matmuls are slow and imprecise)."""
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise UserError(f"--dtype {dtype!r} is not one of auto, bf16, fp16, fp32")
    return _DTYPES[dtype]


class HFRewardEngine:
    """Loads a model folder once and answers validated chat requests."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        dtype: str = "auto",
        device: str | None = None,
        max_new_tokens: int = 64,
    ) -> None:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.processor = VLProcessor.from_pretrained(model_path)
        self.model = load_vl_model(model_path, dtype=torch_dtype(dtype, device), device=device)
        tokenizer = self.processor.tokenizer
        self.eos_token_ids = stop_token_ids(model_path, tokenizer)
        self.generator = HFGenerator(
            self.model, stop_ids=self.eos_token_ids, pad_id=pad_token_id(tokenizer, self.eos_token_ids)
        )
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 0) or 0)
        self._counter = _TokenCounter(tokenizer)

    def admit(self, texts: list[str], image_sizes: list[tuple[int, int]]) -> None:
        """Refuse a request whose text and images cannot fit the model, before its images are
        decoded or its prompt tokenized: texts counted with a ceiling (`data.length`), images by
        their headers' sizes. Thread-safe (its own tokenizer copy), so the app calls it beside the
        batch that is generating, and a huge request never holds the others up."""
        if not self.max_positions:
            return
        images = sum(self.processor.num_image_tokens(height, width) for width, height in image_sizes)
        room = self.max_positions - images
        text = capped_token_count(self._counter, "\n".join(texts), max(room, 0))
        if text > room:
            counted = f"{room + 1:,}+" if text == max(room, 0) + 1 else f"{text:,}"
            raise RequestError(
                400,
                f"the prompt has {counted} text tokens and {images:,} image tokens, over the model's "
                f"{self.max_positions:,} positions; send a shorter prompt or smaller images",
            )

    def generate(self, request: ChatRequest) -> Generation:
        """One completion; with `request.choices`, exactly one of them (see choice_constraint)."""
        (result,) = self.generate_batch([request])
        if isinstance(result, RequestError):
            raise result
        return result

    @torch.no_grad()
    def generate_batch(self, requests: Sequence[ChatRequest]) -> list[Generation | RequestError]:
        """Complete `requests` in one batched `generate`; a bad request fails alone.

        Each row is sampled from its own generator seeded by the request's seed
        (`generation.row_sampling`) and cut at its own token budget: a request gets the tokens it
        would get on its own, whatever else shares the batch.
        """
        results: list[Generation | RequestError | None] = [None] * len(requests)
        plans: list[tuple[int, _Plan]] = []
        for i, request in enumerate(requests):
            try:
                plans.append((i, self._plan(request)))
            except RequestError as exc:
                results[i] = exc
        if plans:
            generator = self.generator
            inputs = generator.inputs(
                [(p.encoded.input_ids, p.encoded.pixel_values, p.encoded.image_grid_thw) for _, p in plans]
            )
            tries = [plan.trie for _, plan in plans]
            processors = LogitsProcessorList()
            if any(trie is not None for trie in tries):  # generated ids start after the padded width
                processors.append(
                    ChoiceLogitsProcessor(tries, inputs["input_ids"].shape[1], self.eos_token_ids)
                )
            result = generator.generate_rows(
                inputs,
                [plan.sampling for _, plan in plans],
                max_tokens=max(plan.budget for _, plan in plans),
                logits_processor=processors,
            )
            for row, (i, plan) in zip(generator.new_tokens(inputs, result), plans, strict=True):
                results[i] = self._finish(plan, row[: plan.budget])
        return [result for result in results if result is not None]

    def _plan(self, request: ChatRequest) -> _Plan:
        """Encode and check one request: its prompt, token budget, sampling and choice trie."""
        prompt = self.processor.apply_chat_template(request.messages)
        try:
            encoded = self.processor.encode(prompt, request.images)
        except UserError as exc:
            raise RequestError(400, str(exc)) from None
        budget = min(request.max_tokens or self.max_new_tokens, self.max_new_tokens)
        choice_ids: dict[str, list[int]] = {}
        trie = None
        prompt_length = len(encoded.input_ids)
        if request.choices:
            choice_ids = {
                c: self.processor.tokenizer.encode(c, add_special_tokens=False) for c in request.choices
            }
            trie = ChoiceTrie(list(choice_ids.values()))
            budget = trie.max_length + 1  # room for the longest choice and its EOS
        if self.max_positions and prompt_length + budget > self.max_positions:
            raise RequestError(
                400,
                f"the prompt has {prompt_length} tokens; with {budget} new tokens it exceeds the model's "
                f"{self.max_positions} positions",
            )
        sampling = RowSampling(
            temperature=request.temperature, top_p=request.top_p, top_k=0, seed=request.seed
        )
        return _Plan(encoded, budget, sampling, trie, choice_ids)

    def _finish(self, plan: _Plan, new_tokens: list[int]) -> Generation:
        new_tokens, finished = trim_at_stop(new_tokens, self.eos_token_ids)  # what follows is padding
        text = (
            match_choice(new_tokens, plan.choice_ids, self.eos_token_ids) if plan.trie is not None else None
        )
        if text is None:
            text = self.processor.decode(new_tokens)
        reason = "stop" if finished else "length"
        return Generation(text, len(plan.encoded.input_ids), len(new_tokens), reason)


@dataclass(frozen=True)
class _Plan:
    encoded: EncodedPrompt
    budget: int
    sampling: RowSampling
    trie: ChoiceTrie | None
    choice_ids: dict[str, list[int]]


class _TokenCounter:
    """The served tokenizer's own rules in an independent copy, used only to count.

    transformers' tokenizer object reconfigures its Rust tokenizer on calls (a mutable borrow), so
    counting with it beside the generating batch could fail with "Already borrowed"; this copy is
    only ever read, which the Rust side allows from any number of threads at once.
    """

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
        self._vocab = self._backend.get_vocab(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self._vocab

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids
