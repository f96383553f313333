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

    def generation_config(self, sampling: SamplingParams) -> GenerationConfig:
        """Only what we ask for: the model folder's generation defaults do not leak in."""
        kwargs: dict[str, object] = {
            "max_new_tokens": sampling.max_tokens,
            "eos_token_id": self.eos_token_ids,
            "pad_token_id": self.pad_token_id,
            "do_sample": not sampling.greedy,
            "return_dict_in_generate": True,
            "output_logits": sampling.return_logprobs,
        }
        if self.placeholder_token_ids:
            kwargs["suppress_tokens"] = self.placeholder_token_ids
        if not sampling.greedy:
            kwargs.update(
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=max(sampling.top_k, 0)
            )
        return GenerationConfig(**kwargs)

    @torch.no_grad()
    def generate(
        self, prompts: list[RolloutPrompt], n: int, sampling: SamplingParams, seed: int
    ) -> list[RolloutOutput]:
        """`n` samples per prompt; `seed` is the step's seed, mixed with each prompt's index."""
        config = self.generation_config(sampling)
        outputs: list[RolloutOutput] = []
        for prompt in prompts:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(seed, prompt.index))
                outputs.extend(self._generate_one(prompt, n, sampling, config))
        return outputs

    def _generate_one(
        self, prompt: RolloutPrompt, n: int, sampling: SamplingParams, config: GenerationConfig
    ) -> list[RolloutOutput]:
        device = self.device
        input_ids = torch.tensor([prompt.prompt_ids] * n, dtype=torch.long, device=device)  # [n, P]
        inputs: dict[str, torch.Tensor] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32),
        }
        if prompt.pixel_values is not None and prompt.image_grid_thw is not None:
            pixels = torch.tensor(prompt.pixel_values, device=device, dtype=self.model.dtype)
            grid = torch.tensor(prompt.image_grid_thw, device=device)
            inputs["pixel_values"] = pixels.repeat(n, 1)  # [n * patches, patch_dim]
            inputs["image_grid_thw"] = grid.repeat(n, 1)  # [n * images, 3]
        result = self.model.generate(**inputs, generation_config=config)
        new_tokens = result.sequences[:, input_ids.shape[1] :]  # [n, R]
        token_logprobs = None
        if sampling.return_logprobs and result.logits:
            logits = torch.stack(result.logits, dim=1).float()  # [n, R, V]
            scale = 1.0 if sampling.greedy else sampling.temperature
            logp = torch.log_softmax(logits / scale, dim=-1)
            token_logprobs = logp.gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1).cpu().numpy()  # [n, R]
        outputs = []
        for k in range(n):
            row = new_tokens[k].tolist()
            length = _length_through_eos(row, self.eos_token_ids)
            truncated = length is None
            length = len(row) if length is None else length
            outputs.append(
                RolloutOutput(
                    prompt_index=prompt.index,
                    sample_index=k,
                    response_ids=row[:length],
                    logprobs=None
                    if token_logprobs is None
                    else token_logprobs[k, :length].astype(np.float32),
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
