"""The model behind the built-in reward server: transformers `generate` on one Qwen2-VL-family model.

Prompts go through sophiavl's own processor (`models.processing.VLProcessor`), so the RM sees the
same image tokens here as under training. One request at a time: the server serialises calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import LogitsProcessorList

from sophiavl_cli.errors import UserError
from sophiavl_cli.generation.hf import HFGenerator
from sophiavl_cli.generation.sampling import SamplingParams
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

    @torch.no_grad()
    def generate(self, request: ChatRequest) -> Generation:
        """One completion; with `request.choices`, exactly one of them (see choice_constraint)."""
        prompt = self.processor.apply_chat_template(request.messages)
        try:
            encoded = self.processor.encode(prompt, request.images)
        except UserError as exc:
            raise RequestError(400, str(exc)) from None
        budget = min(request.max_tokens or self.max_new_tokens, self.max_new_tokens)
        processors = LogitsProcessorList()
        choice_ids: dict[str, list[int]] = {}
        prompt_length = len(encoded.input_ids)
        if request.choices:
            choice_ids = {
                c: self.processor.tokenizer.encode(c, add_special_tokens=False) for c in request.choices
            }
            trie = ChoiceTrie(list(choice_ids.values()))
            budget = trie.max_length + 1  # room for the longest choice and its EOS
            processors.append(ChoiceLogitsProcessor(trie, prompt_length, self.eos_token_ids))
        if self.max_positions and prompt_length + budget > self.max_positions:
            raise RequestError(
                400,
                f"the prompt has {prompt_length} tokens; with {budget} new tokens it exceeds the model's "
                f"{self.max_positions} positions",
            )
        new_tokens = self._generate(encoded, budget, request, processors)
        finished = any(t in self.eos_token_ids for t in new_tokens)
        if request.choices:
            text = match_choice(new_tokens, choice_ids, self.eos_token_ids) or self.processor.decode(
                new_tokens
            )
        else:
            text = self.processor.decode(new_tokens)
        completion = next(
            (i + 1 for i, t in enumerate(new_tokens) if t in self.eos_token_ids), len(new_tokens)
        )
        return Generation(text, prompt_length, completion, "stop" if finished else "length")

    def _generate(
        self, encoded: EncodedPrompt, budget: int, request: ChatRequest, processors: LogitsProcessorList
    ) -> list[int]:
        generator = self.generator
        inputs = generator.inputs([(encoded.input_ids, encoded.pixel_values, encoded.image_grid_thw)])
        sampling = SamplingParams(max_tokens=budget, temperature=request.temperature, top_p=request.top_p)
        result = generator.generate(inputs, sampling, seed=request.seed, logits_processor=processors)
        return generator.new_tokens(inputs, result)[0]
