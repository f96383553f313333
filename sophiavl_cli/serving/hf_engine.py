"""The model behind the built-in reward server: transformers `generate` on one Qwen2-VL-family model.

Prompts go through sophiavl's own processor (`models.processing.VLProcessor`), so the RM sees the
same image tokens here as under training. One request at a time: the server serialises calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from transformers import GenerationConfig, LogitsProcessorList

from sophiavl_cli.errors import UserError
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
        with torch.random.fork_rng(devices=[]):
            if request.seed is not None:
                torch.manual_seed(request.seed)
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
        input_ids = torch.tensor([encoded.input_ids], dtype=torch.long, device=self.device)  # [1, P]
        inputs: dict[str, torch.Tensor] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32),
        }
        if encoded.pixel_values is not None and encoded.image_grid_thw is not None:
            pixels = torch.from_numpy(encoded.pixel_values).to(
                self.device, self.model.dtype
            )  # [patches, dim]
            inputs["pixel_values"] = pixels
            inputs["image_grid_thw"] = torch.from_numpy(encoded.image_grid_thw).to(self.device)  # [images, 3]
        greedy = request.temperature == 0.0
        options: dict[str, object] = {
            "max_new_tokens": budget,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "do_sample": not greedy,
        }
        if not greedy:
            options.update(temperature=request.temperature, top_p=request.top_p, top_k=0)
        output = self.model.generate(
            **inputs, generation_config=GenerationConfig(**options), logits_processor=processors
        )
        return output[0, input_ids.shape[1] :].tolist()
