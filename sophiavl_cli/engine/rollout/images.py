"""Prompt pixels back to the images they came from, for rollout engines that take images (vLLM).

A `RolloutPrompt` carries its images as Qwen2-VL patches (`VLProcessor.preprocess_images`): the
fitted image, rescaled and normalised in float32, each patch repeated `temporal_patch_size`
times. That map is invertible up to float32 rounding, far below half a grey level, so rounding
recovers every uint8 pixel of the fitted image exactly. Rebuilding the images here, rather than
shipping PIL images next to the patches, keeps one source of truth for what the policy sees and
keeps the images off the Ray wire; handing vLLM the fitted size makes its own resize a no-op,
so its vision tower gets the same pixels as the trainer's forward pass.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from sophiavl_cli.models.processing import ImageConfig


def images_from_patches(
    pixel_values: np.ndarray,
    image_grid_thw: np.ndarray,
    cfg: ImageConfig,
    rounded_to: torch.dtype | None = None,
) -> list[Image.Image]:
    """Invert `VLProcessor.preprocess_images` for every image of a prompt: patches [sum patches, C*T*P*P] -> RGB images.

    `images_from_patches(*processor.preprocess_images(images), cfg)` equals
    `[fit_image(image, cfg) for image in images]`, pixel for pixel. Patches that crossed Ray in a
    16-bit compute dtype (`rounded_to`, e.g. bf16) lost the last bits that told neighbouring grey
    levels apart: each pixel is then the level whose normalised value rounds to the same number in
    that dtype, so the engine's vision tower (which casts to it) sees exactly the trainer's input.
    """
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    channels = pixel_values.shape[1] // (t * p * p)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(cfg.image_std, dtype=np.float32)[:, None, None]
    images: list[Image.Image] = []
    start = 0
    for grid_t, grid_h, grid_w in np.asarray(image_grid_thw, dtype=np.int64).tolist():
        if grid_t != 1:
            raise ValueError(
                f"image grid {(grid_t, grid_h, grid_w)}: only still images (grid_t 1) are supported"
            )
        count = grid_h * grid_w
        patches = pixel_values[start : start + count]  # [gh * gw, C * T * P * P]
        start += count
        blocks = patches.reshape(grid_h // m, grid_w // m, m, m, channels, t, p, p)[:, :, :, :, :, 0]
        normed = blocks.transpose(4, 0, 2, 5, 1, 3, 6).reshape(channels, grid_h * p, grid_w * p)  # [C, H, W]
        scaled = normed.astype(np.float64) * std + mean  # [C, H, W], in [0, 1]
        pixels = np.clip(np.rint(scaled / cfg.rescale_factor), 0, 255).astype(np.uint8)  # [C, H, W]
        if rounded_to is not None and rounded_to != torch.float32:
            pixels = _matching_levels(pixels, normed, mean, std, cfg.rescale_factor, rounded_to)
        images.append(Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0))))
    if start != len(pixel_values):
        raise ValueError(
            f"image_grid_thw covers {start} patches but pixel_values holds {len(pixel_values)}; "
            "they must come from the same preprocess_images call"
        )
    return images


def _matching_levels(
    pixels: np.ndarray,
    normed: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    rescale: float,
    dtype: torch.dtype,
) -> np.ndarray:
    """Per pixel, the level among the nearest and its two neighbours whose normalised value rounds to
    `normed` in `dtype` (the nearest stays where none does)."""
    target = torch.from_numpy(np.ascontiguousarray(normed, dtype=np.float32)).to(dtype)
    chosen = pixels.astype(np.int16)
    found = np.zeros(pixels.shape, dtype=bool)
    for step in (0, -1, 1):
        level = np.clip(pixels.astype(np.int16) + step, 0, 255)
        value = ((level.astype(np.float32) * np.float32(rescale)) - mean) / std  # [C, H, W] float32
        match = (torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(dtype) == target).numpy()
        take = match & ~found
        chosen[take] = level[take]
        found |= match
    return chosen.astype(np.uint8)
