"""One transformers `generate` over many prompts, each row sampled from its own random generator.

Why: a batched `generate` is much faster than one call per prompt, but transformers samples the
whole batch from the global RNG, so a row's tokens would depend on which other rows share its
batch. Here `generate` runs greedy and a last logits processor (`RowSampler`) picks every row's
token itself: temperature, top-k, top-p (transformers' own warpers, in transformers' order),
then one uniform draw from that row's `torch.Generator`, mapped through the row's cumulative
distribution. Each row draws exactly once per decoding step whatever the other rows do, so a
row's tokens depend only on its prompt, its sampling settings and its seed (up to float rounding
of the padded batch, which moves a draw only when it lands on a probability boundary).

Prompts of different lengths are left-padded (the batch's new tokens start at one column), with
the images of all rows concatenated in row order, as Qwen2-VL-family models take them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import (
    GenerationConfig,
    LogitsProcessorList,
    PreTrainedModel,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)


@dataclass(frozen=True)
class PromptRow:
    """One row to complete: token ids with image placeholders expanded, and that row's pixels."""

    input_ids: Sequence[int]
    pixel_values: np.ndarray | None = None  # float32 [patches, patch_dim]
    image_grid_thw: np.ndarray | None = None  # int64 [images, 3]


@dataclass(frozen=True)
class RowSampling:
    """How one row picks its tokens. temperature 0 is greedy; seed None draws one from torch's RNG."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # <= 0: off
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RowSampler:
    """The last logits processor of a greedy `generate`: samples each row, returns a one-hot mask.

    Rows sharing sampling settings go through transformers' warpers together; each sampled row
    then draws one uniform number from its own generator and takes the token where that number
    falls in the row's cumulative distribution (inverse-CDF sampling, in float64: one batched
    search instead of a `torch.multinomial` call per row, which cost ~1/6 of a tiny model's
    decoding step here). The returned scores are 0 at the chosen token and -inf elsewhere, so
    greedy's argmax takes it. Raw logits (`output_logits=True`) are untouched, for log-probs.
    """

    def __init__(self, rows: Sequence[RowSampling]) -> None:
        self.rows = list(rows)
        self.seeds = [row.seed if row.seed is not None else _fresh_seed() for row in self.rows]
        groups: dict[tuple[float, int, float], list[int]] = {}
        for r, row in enumerate(self.rows):
            if not row.greedy:
                groups.setdefault((row.temperature, row.top_k, row.top_p), []).append(r)
        # transformers' own warpers, in the order `generate` applies them when sampling
        self.groups: list[tuple[list[int], LogitsProcessorList]] = []
        for (temperature, top_k, top_p), members in groups.items():
            warpers = LogitsProcessorList()
            if temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(temperature))
            if top_k > 0:
                warpers.append(TopKLogitsWarper(top_k=top_k))
            if top_p < 1.0:
                warpers.append(TopPLogitsWarper(top_p=top_p))
            self.groups.append((members, warpers))
        self.greedy_rows = [r for r, row in enumerate(self.rows) if row.greedy]
        self.generators: dict[int, torch.Generator] = {}

    def _uniforms(self, rows: list[int], device: torch.device) -> torch.Tensor:
        """One draw in [0, 1) per row, each from that row's generator (created on first use)."""
        draws = []
        for r in rows:
            generator = self.generators.get(r)
            if generator is None:
                generator = self.generators[r] = torch.Generator(device=device).manual_seed(self.seeds[r])
            draws.append(torch.rand((), generator=generator, device=device, dtype=torch.float64))
        return torch.stack(draws)  # [rows]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if scores.shape[0] != len(self.rows):
            raise ValueError(f"RowSampler was built for {len(self.rows)} rows, got {scores.shape[0]}")
        chosen = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)  # [B]
        if self.greedy_rows:
            index = torch.tensor(self.greedy_rows, device=scores.device)
            chosen[index] = scores[index].argmax(dim=-1)
        for members, warpers in self.groups:
            index = torch.tensor(members, device=scores.device)
            warped = warpers(input_ids[index], scores[index])  # [G, V]
            cdf = torch.softmax(warped.double(), dim=-1).cumsum(dim=-1)  # [G, V]
            targets = self._uniforms(members, scores.device) * cdf[:, -1]  # [G]
            picked = torch.searchsorted(cdf, targets.unsqueeze(1), right=True).squeeze(1)  # [G]
            # rounding can put a target at the very top: take the row's last token with mass
            last = (cdf < cdf[:, -1:]).sum(dim=-1)  # [G], index of the first token reaching the total
            chosen[index] = torch.minimum(picked, last)
        picked = torch.full_like(scores, float("-inf"))
        picked[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return picked


def _fresh_seed() -> int:
    """A seed from torch's global RNG, so `torch.manual_seed` still governs unseeded rows."""
    return int(torch.randint(0, 2**62, (1,)).item())


def batch_inputs(
    rows: Sequence[PromptRow],
    *,
    pad_token_id: int,
    image_token_id: int,
    device: torch.device | str,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Left-padded model inputs for `rows`: ids, attention mask, token types, images in row order."""
    width = max(len(row.input_ids) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # [B, P]
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # [B, P]
    for r, row in enumerate(rows):
        if len(row.input_ids):
            input_ids[r, width - len(row.input_ids) :] = torch.as_tensor(list(row.input_ids))
            attention_mask[r, width - len(row.input_ids) :] = 1
    inputs: dict[str, torch.Tensor] = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "mm_token_type_ids": ((input_ids == image_token_id) & attention_mask.bool())
        .to(torch.int32)
        .to(device),
    }
    with_images = [row for row in rows if row.pixel_values is not None and row.image_grid_thw is not None]
    if with_images:
        pixels = np.concatenate([row.pixel_values for row in with_images])  # [patches, patch_dim]
        grids = np.concatenate([row.image_grid_thw for row in with_images])  # [images, 3]
        inputs["pixel_values"] = torch.from_numpy(np.ascontiguousarray(pixels)).to(device, dtype)
        inputs["image_grid_thw"] = torch.from_numpy(np.ascontiguousarray(grids)).to(device)
    return inputs


@dataclass(frozen=True)
class BatchResult:
    """New tokens per row (pad after a row's EOS) and, when asked, the raw logits of every step."""

    new_tokens: torch.Tensor  # [B, R] long
    logits: torch.Tensor | None  # float32 [B, R, V]


@torch.no_grad()
def generate_rows(
    model: PreTrainedModel,
    rows: Sequence[PromptRow],
    sampling: Sequence[RowSampling],
    *,
    max_new_tokens: int,
    eos_token_ids: Sequence[int],
    pad_token_id: int,
    image_token_id: int,
    suppress_token_ids: Sequence[int] = (),
    logits_processors: Sequence[object] = (),
    return_logits: bool = False,
) -> BatchResult:
    """Complete every row in one `generate`; `logits_processors` run before the sampler."""
    if len(rows) != len(sampling):
        raise ValueError(f"{len(rows)} rows but {len(sampling)} sampling settings")
    device = next(model.parameters()).device
    inputs = batch_inputs(
        rows, pad_token_id=pad_token_id, image_token_id=image_token_id, device=device, dtype=model.dtype
    )
    options: dict[str, object] = {
        "max_new_tokens": max_new_tokens,
        "eos_token_id": list(eos_token_ids),
        "pad_token_id": pad_token_id,
        "do_sample": False,  # RowSampler picks the tokens; greedy takes its one-hot choice
        "return_dict_in_generate": True,
        "output_logits": return_logits,
    }
    if suppress_token_ids:
        options["suppress_tokens"] = list(suppress_token_ids)
    processors = LogitsProcessorList([*logits_processors, RowSampler(sampling)])
    result = model.generate(
        **inputs, generation_config=GenerationConfig(**options), logits_processor=processors
    )
    new_tokens = result.sequences[:, inputs["input_ids"].shape[1] :]  # [B, R]
    logits = torch.stack(result.logits, dim=1).float() if return_logits and result.logits else None
    return BatchResult(new_tokens=new_tokens, logits=logits)
