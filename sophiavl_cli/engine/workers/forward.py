"""Forward passes over `[prompt | response]` micro-batches: the logits of the response tokens.

Shared by the old-log-prob, reference and update passes so all three see exactly the same
inputs. Qwen2.5-VL computes its multimodal (mrope) positions itself from `input_ids`,
`mm_token_type_ids`, `image_grid_thw` and the attention mask, which handles the left padding of
prompts; only the response positions' logits are computed (`logits_to_keep`).

Padding-free (`packed=True`): the rows' real tokens are concatenated into one `[1, T]` row with
per-sequence positions (`[4, 1, T]`: text positions restarting at 0 for each sequence, then the
three mrope rows); transformers derives the sequence boundaries from the restarts (a block-
diagonal causal mask under sdpa/eager, `cu_seqlens` under flash-attention 2). Only with
flash-attention 2 does this save work: sdpa builds a dense `[T, T]` mask, so the worker packs
only when flash-attention 2 runs. The logits come back in the padded `[B, R, V]` layout (zeros
at padding), so the loss code is the same for both.

Micro-batches without images run the vision tower on a dummy image at the point where a real
image would run (a pre-hook on the language model) and add `0 * sum(features)` to the logits:
every rank then all-gathers (and reduce-scatters) the FSDP2 vision blocks in the same order
(Qwen3-VL's DeepStack mergers included).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from sophiavl_cli.engine.workers.batching import MicroBatch, dummy_image


class ResponseForward:
    """Builds model inputs from a `MicroBatch` and returns logits over its response tokens."""

    def __init__(self, config: Any, device: torch.device, *, packed: bool = False) -> None:
        self.device = device
        self.packed = packed
        self.image_token_id = int(getattr(config, "image_token_id", -1))
        vision = getattr(config, "vision_config", None)
        self.has_vision = vision is not None
        if vision is not None:
            patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size**2
            self.dummy = dummy_image(patch_dim, vision.spatial_merge_size)

    def inputs(self, mb: MicroBatch) -> dict[str, torch.Tensor]:
        input_ids = torch.tensor(mb.input_ids, device=self.device)  # [B, P + R]
        inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.tensor(mb.attention_mask, device=self.device),  # [B, P + R]
            "mm_token_type_ids": (input_ids == self.image_token_id).to(torch.int32),  # [B, P + R]
        }
        if mb.pixel_values is not None and mb.image_grid_thw is not None:
            inputs["pixel_values"] = torch.tensor(mb.pixel_values, device=self.device)  # [patches, D]
            inputs["image_grid_thw"] = torch.tensor(mb.image_grid_thw, device=self.device)  # [images, 3]
        return inputs

    def logits(self, model: nn.Module, mb: MicroBatch) -> torch.Tensor:
        """Logits predicting each response token, in the model's dtype: [B, R, V]."""
        num_response = mb.response_mask.shape[1]
        dummy_features: list[torch.Tensor] = []
        handle = None
        if self.has_vision and mb.pixel_values is None:
            handle = _language_model(model).register_forward_pre_hook(
                lambda *_: dummy_features.append(self._run_dummy(model))
            )
        try:
            if self.packed:
                logits = self._packed_logits(model, mb)  # [B, R, V]
            else:
                out = model(**self.inputs(mb), use_cache=False, logits_to_keep=num_response + 1)
                logits = out.logits[:, :-1]  # [B, R, V]: position t predicts token t + 1
        finally:
            if handle is not None:
                handle.remove()
        if dummy_features:
            logits = logits + 0.0 * dummy_features[0].to(logits.dtype)
        return logits

    def _packed_logits(self, model: nn.Module, mb: MicroBatch) -> torch.Tensor:
        """The padded batch's real tokens as one packed row; logits scattered back to [B, R, V]."""
        inputs = self.inputs(mb)
        keep = inputs["attention_mask"].bool()  # [B, L]
        positions = self._positions(model, inputs)  # [3, B, L]
        lengths = keep.sum(dim=1)  # [B]
        text = torch.cat([torch.arange(int(n), device=self.device) for n in lengths])  # [T]
        position_ids = torch.cat([text[None], positions[:, keep]], dim=0)[:, None]  # [4, 1, T]
        starts = torch.cumsum(lengths, 0) - lengths  # [B]: each sequence's offset in the packed row
        prompt_lengths = keep[:, : mb.prompt_width].sum(dim=1)  # [B]
        response_mask = torch.tensor(mb.response_mask, device=self.device).bool()  # [B, R]
        rows, cols = response_mask.nonzero(as_tuple=True)  # response tokens, row-major
        predicting = starts[rows] + prompt_lengths[rows] - 1 + cols  # [K]: the position before each token
        packed = {
            "input_ids": inputs["input_ids"][keep][None],  # [1, T]
            "mm_token_type_ids": inputs["mm_token_type_ids"][keep][None],  # [1, T]
            "position_ids": position_ids,
        }
        if "pixel_values" in inputs:
            packed |= {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}
        out = model(**packed, use_cache=False, logits_to_keep=predicting)  # logits [1, K, V]
        # written in place into one zero tensor: no second [B, R, V] copy (out.logits is freed on return)
        logits = out.logits.new_zeros((*response_mask.shape, out.logits.shape[-1]))  # [B, R, V]
        return logits.index_put_((rows, cols), out.logits[0])

    def _positions(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """mrope positions of the padded batch, [3, B, L]: the model's own rule (1D for text rows)."""
        mask = inputs["attention_mask"]
        if "image_grid_thw" in inputs:
            positions, _ = _vl_model(model).get_rope_index(
                inputs["input_ids"],
                inputs["mm_token_type_ids"],
                inputs["image_grid_thw"],
                attention_mask=mask,
            )
            return positions
        text = (mask.cumsum(dim=1) - 1).clamp(min=0)  # [B, L]
        return text[None].expand(3, -1, -1)

    def _run_dummy(self, model: nn.Module) -> torch.Tensor:
        pixels, grid = (torch.tensor(a, device=self.device) for a in self.dummy)
        out = _vl_model(model).get_image_features(pixels, grid, return_dict=True)
        # Qwen3-VL's DeepStack mergers feed the language layers from their own outputs: summed too,
        # so they join the graph (and the FSDP2 gradient collectives) on every rank
        features = [
            *out.pooler_output,
            *(f for level in getattr(out, "deepstack_features", None) or [] for f in level),
        ]
        return sum(f.float().sum() for f in features)  # scalar, connected to every vision block


def response_tokens(mb: MicroBatch, device: torch.device) -> torch.Tensor:
    """The response token ids of a micro-batch: [B, R]."""
    return torch.tensor(mb.input_ids[:, mb.prompt_width :], device=device)


def _vl_model(model: nn.Module) -> nn.Module:
    """The inner multimodal model (`model.model` in transformers 5 Qwen2/2.5-VL)."""
    return getattr(model, "model", model)


def _language_model(model: nn.Module) -> nn.Module:
    inner = _vl_model(model)
    return getattr(inner, "language_model", inner)
