"""`HFGenerator`: transformers `generate` with every sampling field stated, for every hf caller.

transformers 5 fills each generation field left unset (None) from the model folder's
`generation_config.json` (Qwen2.5-VL's sets `repetition_penalty=1.05`, `top_k`, `temperature`,
`top_p`), so a config that names only what differs from "plain" samples something else than the
caller asked for. Two guards keep folder defaults out: `generation_config` names every field a
logits processor or warper reads (neutral values where the caller asks for nothing), and the
generator detaches the model from its folder's generation config, so fields that have no neutral
value besides None (`bad_words_ids`, `min_p`, `forced_eos_token_id`, ...) cannot leak either.

Inputs are left-padded: decoder-only generation appends on the right, and Qwen2-VL's rotary
positions come from the attention mask, so a padded row gets the positions it would get alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessorList, PreTrainedModel

from sophiavl_cli.generation.row_sampling import RowSampler, RowSampling
from sophiavl_cli.generation.sampling import SamplingParams

# (token ids with image placeholders expanded, pixels [patches, patch_dim] | None, grids [images, 3] | None)
PromptRow = tuple[Sequence[int], np.ndarray | None, np.ndarray | None]

# What "no such processing" is for every field transformers turns into a logits processor or warper
# (temperature, top_p and top_k are set per call: greedy decoding never reads them).
NEUTRAL_FIELDS: dict[str, Any] = {
    "num_beams": 1,
    "num_return_sequences": 1,
    "min_length": 0,
    "min_new_tokens": 0,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "length_penalty": 1.0,
    "guidance_scale": 1.0,
    "renormalize_logits": False,
    "remove_invalid_values": False,
    "use_cache": True,
    "output_scores": False,
}


def generation_config(
    sampling: SamplingParams,
    *,
    stop_ids: Sequence[int],
    pad_id: int,
    suppress_token_ids: Sequence[int] = (),
) -> GenerationConfig:
    """The full `GenerationConfig` for `sampling`: every processing field explicit, nothing inherited."""
    fields: dict[str, Any] = {
        **NEUTRAL_FIELDS,
        "max_new_tokens": sampling.max_tokens,
        "do_sample": not sampling.greedy,
        "eos_token_id": list(stop_ids),
        "pad_token_id": pad_id,
        "return_dict_in_generate": True,
        "output_logits": sampling.return_logprobs,
    }
    if suppress_token_ids:
        fields["suppress_tokens"] = list(suppress_token_ids)
    if not sampling.greedy:
        fields.update(temperature=sampling.temperature, top_p=sampling.top_p, top_k=max(sampling.top_k, 0))
    return GenerationConfig(**fields)


class HFGenerator:
    """A loaded transformers model that generates exactly the sampling it is given."""

    def __init__(
        self,
        model: PreTrainedModel,
        *,
        stop_ids: Sequence[int],
        pad_id: int,
        suppress_token_ids: Sequence[int] = (),
    ) -> None:
        self.model = model
        # The folder's sampling defaults describe how its authors sampled, not this call: detach them
        # (transformers would fill every field left None from here).
        model.generation_config = GenerationConfig()
        self.stop_ids = [int(t) for t in stop_ids]
        self.pad_id = int(pad_id)
        self.suppress_token_ids = [int(t) for t in suppress_token_ids]
        self.image_token_id = int(getattr(model.config, "image_token_id", -1))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, rows: Sequence[PromptRow]) -> dict[str, torch.Tensor]:
        """The `generate` inputs for `rows`, left-padded to the longest, images in row order."""
        device = self.device
        width = max(len(ids) for ids, _, _ in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)  # [B, L]
        attention = torch.zeros_like(input_ids)  # [B, L]
        for row, (ids, _, _) in enumerate(rows):
            input_ids[row, width - len(ids) :] = torch.tensor(list(ids), dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        inputs = {
            "input_ids": input_ids.to(device),
            "attention_mask": attention.to(device),
            "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32).to(device),
        }
        with_images = [(p, g) for _, p, g in rows if p is not None and g is not None]
        if with_images:
            pixels = np.concatenate([p for p, _ in with_images])  # [sum patches, patch_dim]
            grids = np.concatenate([g for _, g in with_images])  # [images, 3]
            inputs["pixel_values"] = torch.from_numpy(pixels).to(device, self.model.dtype)
            inputs["image_grid_thw"] = torch.from_numpy(grids).to(device)
        return inputs

    def config(self, sampling: SamplingParams) -> GenerationConfig:
        return generation_config(
            sampling, stop_ids=self.stop_ids, pad_id=self.pad_id, suppress_token_ids=self.suppress_token_ids
        )

    @torch.no_grad()
    def generate(
        self,
        inputs: dict[str, torch.Tensor],
        sampling: SamplingParams,
        *,
        seed: int | None = None,
        logits_processor: LogitsProcessorList | None = None,
    ) -> Any:
        """`model.generate` under `seed` (the caller's global RNG is left as it was).

        Returns transformers' dict output: `.sequences` [B, L + R] and, with
        `sampling.return_logprobs`, `.logits` (one [B, V] tensor per generated position).
        """
        with torch.random.fork_rng(devices=[]):
            if seed is not None:
                torch.manual_seed(seed)
            return self.model.generate(
                **inputs, generation_config=self.config(sampling), logits_processor=logits_processor
            )

    @torch.no_grad()
    def generate_rows(
        self,
        inputs: dict[str, torch.Tensor],
        rows: Sequence[RowSampling],
        *,
        max_tokens: int,
        return_logprobs: bool = False,
        logits_processor: LogitsProcessorList | None = None,
    ) -> Any:
        """`model.generate` with each row sampled from its own generator (`row_sampling`).

        A row's tokens do not depend on the other rows of the batch; a row without a seed takes
        one from torch's RNG. `logits_processor` runs before the sampler (e.g. a choice
        constraint). Returns what `generate` does.
        """
        if len(rows) != inputs["input_ids"].shape[0]:
            raise ValueError(f"{len(rows)} row samplings for {inputs['input_ids'].shape[0]} rows")
        # greedy: every warper field stays neutral; RowSampler's one-hot choice is what argmax takes
        config = self.config(SamplingParams(max_tokens, temperature=0.0, return_logprobs=return_logprobs))
        processors = LogitsProcessorList([*(logits_processor or []), RowSampler(rows)])
        return self.model.generate(**inputs, generation_config=config, logits_processor=processors)

    def new_tokens(self, inputs: dict[str, torch.Tensor], result: Any) -> list[list[int]]:
        """Each row's generated ids (after the prompt columns), padding included."""
        return result.sequences[:, inputs["input_ids"].shape[1] :].tolist()


def trim_at_stop(tokens: list[int], stop_ids: Sequence[int]) -> tuple[list[int], bool]:
    """`tokens` up to and including the first stop id, and whether one came (False: cut at max_tokens)."""
    stops = set(stop_ids)
    for i, token in enumerate(tokens):
        if token in stops:
            return tokens[: i + 1], True
    return tokens, False
