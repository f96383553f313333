"""The `hf` rollout backend: transformers `generate` on a full-weight copy of the policy.

Each worker keeps one unsharded copy of the policy for generation (the FSDP-sharded policy
cannot generate without a collective per token), refreshed from the FSDP full tensors after
every optimizer step. Prompts are generated one at a time with their `n` samples as one batch
(identical prompts: no padding), under a seed derived from (run seed, step, prompt index):
the tokens a prompt gets do not depend on the rank or the batch it lands in. Slow on purpose:
this backend is for CPU and debugging; throughput comes from vLLM on GPU.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from transformers import GenerationConfig, PreTrainedModel

from sophiavl_cli.engine.rollout.base import RolloutOutput, RolloutPrompt, SamplingParams, derive_seed
from sophiavl_cli.generation.hf import HFGenerator, trim_at_stop


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
        """`n` samples per prompt; `seed` is the step's seed, mixed with each prompt's index."""
        outputs: list[RolloutOutput] = []
        for prompt in prompts:
            outputs.extend(self._generate_one(prompt, n, sampling, derive_seed(seed, prompt.index)))
        return outputs

    def _generate_one(
        self, prompt: RolloutPrompt, n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        row = (prompt.prompt_ids, prompt.pixel_values, prompt.image_grid_thw)
        inputs = self.generator.inputs([row] * n)  # n identical rows: no padding
        result = self.generator.generate(inputs, sampling, seed=seed)
        new_tokens = result.sequences[:, inputs["input_ids"].shape[1] :]  # [n, R]
        token_logprobs = None
        if sampling.return_logprobs and result.logits:
            logits = torch.stack(result.logits, dim=1).float()  # [n, R, V]
            scale = 1.0 if sampling.greedy else sampling.temperature
            logp = torch.log_softmax(logits / scale, dim=-1)
            token_logprobs = logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1).cpu().numpy()  # [n, R]
        outputs = []
        for k in range(n):
            response, stopped = trim_at_stop(new_tokens[k].tolist(), self.eos_token_ids)
            outputs.append(
                RolloutOutput(
                    prompt_index=prompt.index,
                    sample_index=k,
                    response_ids=response,
                    logprobs=None
                    if token_logprobs is None
                    else token_logprobs[k, : len(response)].astype(np.float32),
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
