"""The `hf` rollout backend: transformers `generate` on a full-weight copy of the policy.

Each worker keeps one unsharded copy of the policy for generation (the FSDP-sharded policy
cannot generate without a collective per token), refreshed from the FSDP full tensors after
every optimizer step. All of a rank's prompts x n samples go through one left-padded `generate`,
each row sampled from its own generator seeded with (run seed, step, prompt index, sample index)
(`generation.row_sampling`): the tokens a prompt gets do not depend on the rank or on the other
prompts of the batch. This backend is for CPU and debugging; throughput comes from vLLM on GPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel

from sophiavl_cli.engine.rollout.base import RolloutOutput, RolloutPrompt, SamplingParams, derive_seed
from sophiavl_cli.generation.hf import HFGenerator, trim_at_stop
from sophiavl_cli.generation.row_sampling import RowSampling


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
        self.generator = HFGenerator(
            self.model,
            stop_ids=self.eos_token_ids,
            pad_id=pad_token_id,
            suppress_token_ids=self.placeholder_token_ids,
        )
        for param in self.model.parameters():
            param.requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return self.generator.device

    def generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        """Every sampling field explicit: the model folder's generation defaults do not leak in."""
        return self.generator.config(sampling)

    @torch.no_grad()
    def generate(
        self, prompts: list[RolloutPrompt], n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        """`n` samples per prompt in one batched `generate`; sample k of prompt i draws from its own
        generator seeded with (step seed, i, k)."""
        if not prompts:
            return []
        rows = [(p.prompt_ids, p.pixel_values, p.image_grid_thw) for p in prompts for _ in range(n)]
        row_sampling = [
            RowSampling.of(sampling, derive_seed(seed, p.index, k)) for p in prompts for k in range(n)
        ]
        inputs = self.generator.inputs(rows)  # left-padded to the longest prompt
        result = self.generator.generate_rows(
            inputs, row_sampling, max_tokens=sampling.max_tokens, return_logprobs=sampling.return_logprobs
        )
        new_tokens = result.sequences[:, inputs["input_ids"].shape[1] :]  # [B, R]
        token_logprobs = None
        if sampling.return_logprobs and result.logits:
            logits = torch.stack(result.logits, dim=1).float()  # [B, R, V]
            scale = 1.0 if sampling.greedy else sampling.temperature
            logp = torch.log_softmax(logits / scale, dim=-1)
            token_logprobs = logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1).cpu().numpy()  # [B, R]
        outputs = []
        for r, tokens in enumerate(new_tokens.tolist()):
            response, stopped = trim_at_stop(tokens, self.eos_token_ids)
            outputs.append(
                RolloutOutput(
                    prompt_index=prompts[r // n].index,
                    sample_index=r % n,
                    response_ids=response,
                    logprobs=None
                    if token_logprobs is None
                    else token_logprobs[r, : len(response)].astype(np.float32),
                    truncated=not stopped,
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
