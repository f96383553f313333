"""Data rows -> encoded prompts on the driver: messages, chat text, token ids and numpy pixels.

Done once per prompt on the driver (not per rank), so the workers, the thinking reward model and
the logs all see the same prompt: token ids with image placeholders expanded and pixel arrays,
float32 or, once the workers' device is known, the policy's compute dtype (`patches_to_wire`; numpy
crosses Ray several times cheaper than torch tensors).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from sophiavl_cli.config.recipe import DataConfig
from sophiavl_cli.data.images import load_image
from sophiavl_cli.data.length import capped_token_count
from sophiavl_cli.data.prompts import build_messages, load_template
from sophiavl_cli.engine.rollout import RolloutPrompt
from sophiavl_cli.engine.rollout.base import patches_to_wire
from sophiavl_cli.errors import UserError
from sophiavl_cli.models.processing import VLProcessor

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class BuiltPrompt:
    """One row ready to roll out: the engine's prompt plus what rewards and logs need."""

    prompt: RolloutPrompt
    text: str  # the rendered chat prompt (what the thinking RM is shown as the question)
    images: list[Image.Image]
    answer: str
    problem_type: str


class PromptBuilder:
    """Renders rows with the recipe's prompt preset/template and encodes them with the processor."""

    def __init__(
        self, processor: VLProcessor, data: DataConfig, patch_dtype: torch.dtype | None = None
    ) -> None:
        self.processor = processor
        self.data = data
        # the dtype patches cross Ray in (the policy's compute dtype); the driver sets it once the
        # workers' device is known
        self.patch_dtype = patch_dtype
        self.template = load_template(data.prompt_template) if data.prompt_template else None

    def build(self, row: dict[str, Any], index: int) -> BuiltPrompt:
        messages = build_messages(row, preset=self.data.prompt_preset, template=self.template)
        text = self.processor.apply_chat_template(messages)
        where = str(row.get("source") or "row")
        images = [load_image(ref, where=where) for ref in _image_refs(row.get(self.data.image_key))]
        encoded = self.processor.encode(text, images)
        return BuiltPrompt(
            prompt=RolloutPrompt(
                index=index,
                prompt_ids=list(encoded.input_ids),
                pixel_values=patches_to_wire(encoded.pixel_values, self.patch_dtype),
                image_grid_thw=encoded.image_grid_thw,
            ),
            text=text,
            images=images,
            answer=str(row.get(self.data.answer_key) or ""),
            problem_type=str(row.get("problem_type") or ""),
        )

    def build_batch(self, rows: Sequence[dict[str, Any]]) -> list[BuiltPrompt]:
        """Prompts for a batch, indexed by position; a prompt over `data.max_prompt_length` is an error."""
        built = [self.build(row, i) for i, row in enumerate(rows)]
        for item in built:
            if len(item.prompt.prompt_ids) > self.data.max_prompt_length:
                raise UserError(
                    f"a prompt has {len(item.prompt.prompt_ids)} tokens (image tokens included), over "
                    f"data.max_prompt_length={self.data.max_prompt_length}; raise it or lower data.max_pixels"
                )
        return built

    def prompt_length(self, row: dict[str, Any], where: str = "") -> int:
        """Token count of a row's prompt without decoding its pixels (image sizes come from headers).

        Counted up to `data.max_prompt_length` (beyond it: that + 1 or more), so a huge row costs
        no more memory than a row at the limit (data/length.py). An image that cannot be opened (a
        decompression bomb too) is a `UserError` naming it and `where` (the row's file and row).
        """
        messages = build_messages(row, preset=self.data.prompt_preset, template=self.template)
        text = self.processor.apply_chat_template(messages)
        text_tokens = capped_token_count(self.processor.tokenizer, text, self.data.max_prompt_length)
        del messages, text
        if text_tokens > self.data.max_prompt_length:
            return text_tokens
        extra = 0
        for ref in _image_refs(row.get(self.data.image_key)):
            with _open_header(ref, where) as image:
                extra += self.processor.num_image_tokens(image.height, image.width) - 1
        return text_tokens + extra

    def keep_fitting(self, rows: Sequence[dict[str, Any]]) -> tuple[list[int], int]:
        """Indices of rows whose prompt fits `data.max_prompt_length`, and how many were dropped."""
        origin = getattr(rows, "origin", None)  # loader.Rows knows each row's file and row number

        def fits(i: int) -> bool:
            where = origin(i).where if origin is not None else f"row {i + 1}"
            return self.prompt_length(rows[i], where) <= self.data.max_prompt_length

        kept = [i for i in range(len(rows)) if fits(i)]
        return kept, len(rows) - len(kept)


def _image_refs(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _open_header(ref: Any, where: str = "") -> Image.Image:
    from sophiavl_cli.data.images import open_image

    return open_image(ref, where=where)
