"""Turn (chat messages, PIL images) into the prompt ids and pixel arrays a Qwen VL model takes.

Why not `AutoProcessor`: transformers picks its torchvision-backed image processor when
torchvision imports and a PIL one otherwise, and the two resize with different bicubic kernels,
so the same image gives slightly different pixels depending on the machine. Rollout (vLLM), the
policy forward pass and the thinking-reward prompt must all see the same tokens, so this module
pins the PIL one (`Qwen2VLImageProcessorPil`) and builds it from the folder's settings:

    resize to smart_resize(h, w) (PIL bicubic) -> x / 255 -> (x - mean) / std -> channels first
    -> the still image repeated `temporal_patch_size` times -> patches in Qwen2-VL's order

`smart_resize` and `fit_image` stay here: they give one-line errors for images Qwen2-VL cannot
take, and `fit_image` hands vLLM images already at their final size.

Each `<|image_pad|>` in the prompt becomes `grid_t * grid_h * grid_w / merge_size**2` copies, the
number of vision tokens the merger emits for that image. Qwen3-VL and Qwen3.5 take the same
pipeline with their own settings from the folder (patch 16, mean and std 0.5).

**Templates that open `<think>`.** Qwen3.5's template (and Qwen3-VL-Thinking's) ends the generation
prompt with `<think>\n`, so the model's reply would start inside a thinking block. The SophiaVL-R1
prompt asks the model for `<think>...</think><answer>...</answer>`, and the format reward and the
thinking reward model read the response alone; so `apply_chat_template` drops that opener and the
response carries the whole format (a thinking model writes `<think>` as its first token). The
`enable_thinking=False` variant (an empty closed block in the prompt) is not used: it tells the
model not to think, against the prompt.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from sophiavl_cli.errors import UserError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

IMAGE_PAD = "<|image_pad|>"
THINK_OPENER = "<think>\n"
ASSISTANT_HEADER = "<|im_start|>assistant\n"
VIDEO_PAD = "<|video_pad|>"
MAX_ASPECT_RATIO = 200

# Qwen2-VL's defaults (the OpenAI CLIP statistics), used when a preprocessor config omits them.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(
    height: int, width: int, *, factor: int = 28, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """The (height, width) Qwen2-VL resizes an image to.

    Both sides become multiples of `factor` (patch_size * merge_size), the area lands in
    [min_pixels, max_pixels] and the aspect ratio is kept as closely as the rounding allows.
    Rounding is Python's `round` (half to even), as in the reference processor.

    Example:
        >>> smart_resize(100, 200, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
        (112, 196)
    """
    if height <= 0 or width <= 0:
        raise UserError(f"image size {width}x{height} is empty; every image needs at least one pixel")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise UserError(
            f"image of {width}x{height} has aspect ratio {ratio:.0f} > {MAX_ASPECT_RATIO}, which Qwen2-VL "
            "cannot take; crop or pad the image"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class ImageConfig:
    """The image preprocessing settings of a model folder (`preprocessor_config.json`)."""

    min_pixels: int
    max_pixels: int
    patch_size: int = 14
    merge_size: int = 2
    temporal_patch_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    rescale_factor: float = 1 / 255

    @property
    def factor(self) -> int:
        """Side lengths are multiples of this: one merged vision token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @classmethod
    def from_file(cls, path: Path) -> ImageConfig:
        """Read min/max pixels from either the flat keys or the newer `size` dict."""
        try:
            raw: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(
                f"{path}: cannot read the image processor config ({exc}); re-download the model"
            ) from exc
        size = raw.get("size") or {}
        min_pixels = raw.get("min_pixels", size.get("shortest_edge", size.get("min_pixels", 56 * 56)))
        max_pixels = raw.get("max_pixels", size.get("longest_edge", size.get("max_pixels", 28 * 28 * 1280)))
        return cls(
            min_pixels=int(min_pixels),
            max_pixels=int(max_pixels),
            patch_size=int(raw.get("patch_size", 14)),
            merge_size=int(raw.get("merge_size", 2)),
            temporal_patch_size=int(raw.get("temporal_patch_size", 2)),
            image_mean=tuple(raw.get("image_mean", CLIP_MEAN)),  # type: ignore[arg-type]
            image_std=tuple(raw.get("image_std", CLIP_STD)),  # type: ignore[arg-type]
            rescale_factor=float(raw.get("rescale_factor", 1 / 255)),
        )


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB view of `image`. Alpha is dropped, not composited: PIL's plain convert, as transformers'
    Qwen2-VL processors and the released training code do, so all paths see the same pixels."""
    return image if image.mode == "RGB" else image.convert("RGB")


def fit_image(image: Image.Image, cfg: ImageConfig) -> Image.Image:
    """RGB `image` resized (PIL bicubic) to its `smart_resize` size: the pixels the model sees.

    Handing this image to another Qwen2-VL processor (vLLM's) makes its own resize a no-op, so
    both sides get the same pixels whatever resize kernel they use.
    """
    rgb = to_rgb(image)
    height, width = smart_resize(
        rgb.height, rgb.width, factor=cfg.factor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
    )
    if (height, width) == (rgb.height, rgb.width):
        return rgb
    return rgb.resize((width, height), resample=Image.Resampling.BICUBIC)


@dataclass(frozen=True)
class EncodedPrompt:
    """A prompt ready for the model: ids with image placeholders expanded, plus the pixels."""

    input_ids: list[int]
    pixel_values: np.ndarray | None  # float32 [num_patches, C * T * P * P]
    image_grid_thw: np.ndarray | None  # int64 [num_images, 3]
    num_image_tokens: int


class VLProcessor:
    """Tokenizer + chat template + pinned PIL image preprocessing for a Qwen2-VL ... Qwen3.5 folder."""

    def __init__(
        self, tokenizer: PreTrainedTokenizerBase, image_config: ImageConfig, chat_template: str
    ) -> None:
        self.tokenizer = tokenizer
        self.image_config = image_config
        self.chat_template = chat_template
        self.image_token_id = self._special_id(IMAGE_PAD)
        self.video_token_id = self._special_id(VIDEO_PAD)

    @classmethod
    def from_pretrained(
        cls, path: str | Path, *, min_pixels: int | None = None, max_pixels: int | None = None
    ) -> VLProcessor:
        """Load from a model folder; `min_pixels`/`max_pixels` override the folder's bounds."""
        from transformers import AutoTokenizer

        folder = Path(path)
        config_file = folder / "preprocessor_config.json"
        if not config_file.is_file():
            raise UserError(
                f"{folder}: no preprocessor_config.json; pass a Qwen VL model folder (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5)"
            )
        image_config = ImageConfig.from_file(config_file)
        bounds = {
            "min_pixels": image_config.min_pixels if min_pixels is None else min_pixels,
            "max_pixels": image_config.max_pixels if max_pixels is None else max_pixels,
        }
        if bounds["min_pixels"] > bounds["max_pixels"]:
            raise UserError(
                f"min_pixels {bounds['min_pixels']} is above max_pixels {bounds['max_pixels']}; swap them"
            )
        image_config = dataclasses.replace(image_config, **bounds)
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        return cls(tokenizer, image_config, _find_chat_template(folder, tokenizer))

    # ---- text ---------------------------------------------------------------------------------

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """Render HF content-list messages to the prompt string (one `<|image_pad|>` per image).

        A generation prompt that the template ends with an opened `<think>` block loses the
        opener: the response then holds the whole `<think>...</think><answer>...</answer>` (module
        docstring)."""
        text = str(
            self.tokenizer.apply_chat_template(
                messages,
                chat_template=self.chat_template,
                tokenize=False,
                add_generation_prompt=add_generation_prompt,
            )
        )
        if add_generation_prompt and text.endswith(ASSISTANT_HEADER + THINK_OPENER):
            text = text[: -len(THINK_OPENER)]
        return text

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        """Token ids -> text."""
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens))

    # ---- images -------------------------------------------------------------------------------

    def image_grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(grid_t, grid_h, grid_w) an image of this size gets, without touching its pixels."""
        cfg = self.image_config
        h, w = smart_resize(
            height, width, factor=cfg.factor, min_pixels=cfg.min_pixels, max_pixels=cfg.max_pixels
        )
        return 1, h // cfg.patch_size, w // cfg.patch_size

    def num_image_tokens(self, height: int, width: int) -> int:
        """How many `<|image_pad|>` tokens an image of this size expands to."""
        t, h, w = self.image_grid(height, width)
        return t * h * w // self.image_config.merge_size**2

    def fit_image(self, image: Image.Image) -> Image.Image:
        """`image` as RGB at the size the model sees it (see module-level `fit_image`)."""
        return fit_image(image, self.image_config)

    def preprocess_images(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """Images -> (pixel_values [sum patches, C*T*P*P] float32, image_grid_thw [n, 3] int64).

        Patch order follows the vision tower: merge windows row-major, inside each window its
        merge_size x merge_size patches row-major (the PIL Qwen2-VL image processor's layout).
        """
        for image in images:  # our one-line errors for an empty or too elongated image
            self.image_grid(image.height, image.width)
        out = self._pil_image_processor()(images=images, return_tensors="np")
        pixels = np.asarray(out["pixel_values"], dtype=np.float32)
        return pixels, np.asarray(out["image_grid_thw"], dtype=np.int64)

    def _pil_image_processor(self) -> Any:
        """transformers' PIL Qwen2-VL image processor with this folder's settings, built once."""
        processor = self.__dict__.get("_pil_processor")
        if processor is None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            cfg = self.image_config
            processor = self.__dict__["_pil_processor"] = Qwen2VLImageProcessorPil(
                min_pixels=cfg.min_pixels,
                max_pixels=cfg.max_pixels,
                patch_size=cfg.patch_size,
                merge_size=cfg.merge_size,
                temporal_patch_size=cfg.temporal_patch_size,
                image_mean=list(cfg.image_mean),
                image_std=list(cfg.image_std),
                rescale_factor=cfg.rescale_factor,
            )
        return processor

    # ---- both ---------------------------------------------------------------------------------

    def encode(self, text: str, images: list[Image.Image]) -> EncodedPrompt:
        """Tokenize a rendered prompt and expand its i-th `<|image_pad|>` for the i-th image."""
        ids: list[int] = list(self.tokenizer.encode(text, add_special_tokens=False))
        if self.video_token_id in ids:
            raise UserError("the prompt holds a <|video_pad|> placeholder; sophiavl handles images only")
        num_slots = ids.count(self.image_token_id)
        if num_slots != len(images):
            raise UserError(
                f"the prompt has {num_slots} image placeholder(s) but {len(images)} image(s) were given; "
                "put one image part per image in the messages"
            )
        if not images:
            return EncodedPrompt(input_ids=ids, pixel_values=None, image_grid_thw=None, num_image_tokens=0)
        pixel_values, grid_thw = self.preprocess_images(images)
        per_image = [int(np.prod(g)) // self.image_config.merge_size**2 for g in grid_thw]
        expanded: list[int] = []
        slot = 0
        for token in ids:
            if token == self.image_token_id:
                expanded.extend([token] * per_image[slot])
                slot += 1
            else:
                expanded.append(token)
        return EncodedPrompt(
            input_ids=expanded,
            pixel_values=pixel_values,
            image_grid_thw=grid_thw,
            num_image_tokens=sum(per_image),
        )

    def collapse_image_tokens(self, ids: list[int]) -> list[int]:
        """Expanded ids -> one `<|image_pad|>` per image, the form vLLM expects with images.

        vLLM expands each `<|image_pad|>` in `prompt_token_ids` itself; handing it ids that are
        already expanded would expand every copy again.
        """
        return [t for i, t in enumerate(ids) if t != self.image_token_id or i == 0 or ids[i - 1] != t]

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if not isinstance(token_id, int) or token_id == self.tokenizer.unk_token_id:
            raise UserError(
                f"the tokenizer has no {token} token; pass a Qwen VL model folder (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5)"
            )
        return token_id


def _find_chat_template(folder: Path, tokenizer: PreTrainedTokenizerBase) -> str:
    """The chat template: the tokenizer's, else the processor's file (`chat_template.jinja|json`)."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template:
        return template
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text(encoding="utf-8")
    if (folder / "chat_template.json").is_file():
        return str(json.loads((folder / "chat_template.json").read_text(encoding="utf-8"))["chat_template"])
    raise UserError(
        f"{folder}: no chat template (tokenizer_config.json, chat_template.jinja or .json); add one"
    )
