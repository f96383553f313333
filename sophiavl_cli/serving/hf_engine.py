"""The model behind the built-in reward server: transformers `generate` on one Qwen2-VL-family model.

Prompts go through sophiavl's own processor (`models.processing.VLProcessor`), so the RM sees the
same image tokens here as under training. The app batches concurrent requests (`generate_batch`:
one left-padded `generate`, each row sampled from its own seeded generator).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from sophiavl_cli.errors import UserError
from sophiavl_cli.models.batch_generation import PromptRow, RowSampling, generate_rows
from sophiavl_cli.models.loading import load_vl_model
from sophiavl_cli.models.processing import VLProcessor
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
        eos = self.model.generation_config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_ids:
            eos_ids.append(int(tokenizer.eos_token_id))
        if not eos_ids:
            raise UserError(
                f"{model_path}: neither generation_config.json nor the tokenizer names an EOS token"
            )
        self.eos_token_ids = eos_ids
        pad = tokenizer.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else eos_ids[0]
        self.image_token_id = int(getattr(self.model.config, "image_token_id", self.processor.image_token_id))
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.max_positions = int(getattr(text_config, "max_position_embeddings", 0) or 0)

    def generate(self, request: ChatRequest) -> Generation:
        """One completion; with `request.choices`, exactly one of them (see choice_constraint)."""
        (result,) = self.generate_batch([request])
        if isinstance(result, RequestError):
            raise result
        return result

    @torch.no_grad()
    def generate_batch(self, requests: Sequence[ChatRequest]) -> list[Generation | RequestError]:
        """Complete `requests` in one batched `generate`; a bad request fails alone.

        Each row is sampled from its own generator seeded by the request's seed (see
        `models.batch_generation`), and cut at its own token budget: a request gets the tokens it
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
            rows = [plan.row for _, plan in plans]
            width = max(len(row.input_ids) for row in rows)
            tries = [plan.trie for _, plan in plans]
            processors = [ChoiceLogitsProcessor(tries, width, self.eos_token_ids)] if any(tries) else []
            batch = generate_rows(
                self.model,
                rows,
                [plan.sampling for _, plan in plans],
                max_new_tokens=max(plan.budget for _, plan in plans),
                eos_token_ids=self.eos_token_ids,
                pad_token_id=self.pad_token_id,
                image_token_id=self.image_token_id,
                logits_processors=processors,
            )
            for r, (i, plan) in enumerate(plans):
                results[i] = self._finish(plan, batch.new_tokens[r, : plan.budget].tolist())
        return [result for result in results if result is not None]

    def _plan(self, request: ChatRequest) -> _Plan:
        """Encode and check one request: its prompt row, token budget, sampling and choice trie."""
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
        row = PromptRow(encoded.input_ids, encoded.pixel_values, encoded.image_grid_thw)
        return _Plan(row, budget, sampling, trie, choice_ids)

    def _finish(self, plan: _Plan, new_tokens: list[int]) -> Generation:
        completion = next(
            (i + 1 for i, t in enumerate(new_tokens) if t in self.eos_token_ids), len(new_tokens)
        )
        new_tokens = new_tokens[:completion]  # what follows the EOS is the batch's padding
        finished = any(t in self.eos_token_ids for t in new_tokens)
        text = None
        if plan.trie is not None:
            text = match_choice(new_tokens, plan.choice_ids, self.eos_token_ids)
        if text is None:
            text = self.processor.decode(new_tokens)
        return Generation(text, len(plan.row.input_ids), completion, "stop" if finished else "length")


@dataclass(frozen=True)
class _Plan:
    row: PromptRow
    budget: int
    sampling: RowSampling
    trie: ChoiceTrie | None
    choice_ids: dict[str, list[int]]
