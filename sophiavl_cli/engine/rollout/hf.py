"""The `hf` rollout backend: transformers `generate` on a full-weight copy of the policy.

Each worker keeps one unsharded copy of the policy for generation (the FSDP-sharded policy
cannot generate without a collective per token), refreshed from the FSDP full tensors after
every optimizer step. All of a rank's prompts x n samples go through one left-padded `generate`
(`models.batch_generation`), each row sampled from its own generator seeded with (run seed,
step, prompt index, sample index): the tokens a prompt gets do not depend on the rank or on the
other prompts of the batch. This backend is for CPU and debugging; throughput comes from vLLM
on GPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from transformers import PreTrainedModel

from sophiavl_cli.engine.rollout.base import RolloutOutput, RolloutPrompt, SamplingParams, derive_seed
from sophiavl_cli.models.batch_generation import PromptRow, RowSampling, generate_rows


class HFRollout:
    """`RolloutEngine` over a plain (unsharded) transformers model."""

    def __init__(self, model: PreTrainedModel, *, eos_token_ids: list[int], pad_token_id: int) -> None:
        self.model = model.eval()
        self.eos_token_ids = list(eos_token_ids)
        self.pad_token_id = pad_token_id
        self.image_token_id = int(getattr(model.config, "image_token_id", -1))
        # Placeholders the processor expands into vision features: one sampled into a response would
        # make the training forward find more image tokens than image features (and fail).
        self.placeholder_token_ids = [
            int(token)
            for token in (self.image_token_id, getattr(model.config, "video_token_id", None))
            if token is not None and int(token) >= 0
        ]
        for param in self.model.parameters():
            param.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(
        self, prompts: list[RolloutPrompt], n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        """`n` samples per prompt in one batched `generate`; sample k of prompt i draws from its own
        generator seeded with (step seed, i, k)."""
        if not prompts:
            return []
        rows = [
            PromptRow(prompt.prompt_ids, prompt.pixel_values, prompt.image_grid_thw)
            for prompt in prompts
            for _ in range(n)
        ]
        row_sampling = [
            RowSampling(
                temperature=sampling.temperature,
                top_p=sampling.top_p,
                top_k=max(sampling.top_k, 0),
                seed=derive_seed(seed, prompt.index, k),
            )
            for prompt in prompts
            for k in range(n)
        ]
        batch = generate_rows(
            self.model,
            rows,
            row_sampling,
            max_new_tokens=sampling.max_tokens,
            eos_token_ids=self.eos_token_ids,
            pad_token_id=self.pad_token_id,
            image_token_id=self.image_token_id,
            suppress_token_ids=self.placeholder_token_ids,
            return_logits=sampling.return_logprobs,
        )
        token_logprobs = None
        if batch.logits is not None:
            scale = 1.0 if sampling.greedy else sampling.temperature
            logp = torch.log_softmax(batch.logits / scale, dim=-1)  # [B, R, V]
            token_logprobs = (
                logp.gather(-1, batch.new_tokens.unsqueeze(-1)).squeeze(-1).cpu().numpy()
            )  # [B, R]
        outputs: list[RolloutOutput] = []
        for r, tokens in enumerate(batch.new_tokens.tolist()):
            prompt, k = prompts[r // n], r % n
            length = _length_through_eos(tokens, self.eos_token_ids)
            truncated = length is None
            length = len(tokens) if length is None else length
            outputs.append(
                RolloutOutput(
                    prompt_index=prompt.index,
                    sample_index=k,
                    response_ids=tokens[:length],
                    logprobs=None
                    if token_logprobs is None
                    else token_logprobs[r, :length].astype(np.float32),
                    truncated=truncated,
                )
            )
        return outputs

    @torch.no_grad()
    def sync_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy full tensors in place; every parameter of the copy must be covered exactly once."""
        params = dict(self.model.named_parameters())
        seen: set[str] = set()
        for name, tensor in named_tensors:
            target = params.get(name)
            if target is None:
                raise KeyError(f"weight sync: the rollout model has no parameter named {name!r}")
            target.copy_(tensor.to(device=target.device, dtype=target.dtype))
            seen.add(name)
        missing = sorted(set(params) - seen)
        if missing:
            raise KeyError(
                f"weight sync: {len(missing)} rollout parameters were not sent, e.g. {missing[:3]}"
            )


def _length_through_eos(tokens: list[int], eos_token_ids: list[int]) -> int | None:
    """Length of the response up to and including its first EOS, or None when there is none."""
    eos = set(eos_token_ids)
    for i, token in enumerate(tokens):
        if token in eos:
            return i + 1
    return None
