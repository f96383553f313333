"""Per-row sampling for one batched transformers `generate`: each row draws from its own generator.

Why: a batched `generate` is much faster than one call per prompt, but transformers samples the
whole batch from the global RNG, so a row's tokens would depend on which other rows share its
batch. `HFGenerator.generate_rows` runs greedy with `RowSampler` as the last logits processor,
which picks every row's token itself: temperature, top-k, top-p (transformers' own warpers, in
transformers' order), then one uniform draw from that row's `torch.Generator`, mapped through the
row's cumulative distribution. Each row draws exactly once per decoding step whatever the other
rows do, so a row's tokens depend only on its prompt, its sampling settings and its seed (up to
float rounding of the padded batch, which moves a draw only when it lands on a probability
boundary).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from sophiavl_cli.generation.sampling import SamplingParams


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

    @classmethod
    def of(cls, sampling: SamplingParams, seed: int | None) -> RowSampling:
        return cls(sampling.temperature, sampling.top_p, max(sampling.top_k, 0), seed)


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
        onehot = torch.full_like(scores, float("-inf"))  # [B, V]
        onehot[torch.arange(scores.shape[0], device=scores.device), chosen] = 0.0
        return onehot


def _fresh_seed() -> int:
    """A seed from torch's global RNG, so `torch.manual_seed` still governs unseeded rows."""
    return int(torch.randint(0, 2**62, (1,)).item())
