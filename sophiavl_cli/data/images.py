"""Image references in data rows: normalise them, resolve paths, open them as RGB PIL images.

`open_image` / `load_image` are the one way sophiavl opens an image from data (training rows, eval
samples, `infer` requests, the data check): every way a file can be bad, a decompression bomb
included (an image whose header claims more pixels than PIL will decode, e.g. a 48 KB one-bit PNG
of 20000 x 20000), is one `UserError` naming the image and where it was found.

An image column may hold a path, a list of paths, an HF image dict (`{"bytes": ..., "path": ...}`,
what parquet files written by `datasets` carry), raw bytes or a PIL image. Rows keep the light
reference (an absolute path or the dict); pixels are decoded only where they are needed, so a
130k-row dataset stays cheap to load, shuffle and check.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from sophiavl_cli.errors import UserError

ImageRef = Any  # str path | dict with bytes/path | bytes | PIL.Image.Image


def image_list(value: Any) -> list[ImageRef]:
    """Every image column shape as a list: None/"" -> [], one ref -> [ref], list -> its non-empty items."""
    if value is None:
        return []
    if isinstance(value, str | bytes | bytearray | Mapping | Image.Image):
        return [value] if _present(value) else []
    if isinstance(value, list | tuple):
        return [item for item in value if _present(item)]
    raise UserError(
        f"image column holds a {type(value).__name__}; expected a path, a list of paths or image dicts"
    )


def _present(ref: Any) -> bool:
    if ref is None:
        return False
    if isinstance(ref, str | bytes | bytearray):
        return len(ref) > 0
    if isinstance(ref, Mapping):
        return bool(ref.get("bytes")) or bool(ref.get("path"))
    return True


def resolve_image_ref(ref: ImageRef, base: Path | None) -> ImageRef:
    """Relative paths (bare or inside a dict without bytes) joined to `base` and made absolute."""
    if isinstance(ref, str):
        return _join(ref, base)
    if isinstance(ref, Mapping) and not ref.get("bytes") and ref.get("path"):
        return {**ref, "path": _join(str(ref["path"]), base)}
    return ref


def _join(path: str, base: Path | None) -> str:
    expanded = os.path.expanduser(path)
    if os.path.isabs(expanded):
        return os.path.normpath(expanded)
    return os.path.normpath(os.path.join(os.fspath(base) if base else os.getcwd(), expanded))


def describe(ref: ImageRef) -> str:
    """A short name for an image in messages: its path, or what kind of in-memory image it is."""
    if isinstance(ref, str):
        return ref
    if isinstance(ref, Mapping):
        if ref.get("path"):
            return f"{ref['path']} (from an image dict)"
        return "an image dict's bytes"
    if isinstance(ref, bytes | bytearray):
        return "raw image bytes"
    return "an in-memory image"


def open_image(obj: ImageRef, base: Path | None = None, *, where: str = "") -> Image.Image:
    """Open an image lazily (header read, pixels not decoded); errors name the file and `where`."""
    prefix = f"{where}: " if where else ""
    if isinstance(obj, Image.Image):
        return obj
    ref = resolve_image_ref(os.fspath(obj) if isinstance(obj, os.PathLike) else obj, base)
    try:
        if isinstance(ref, str):
            return Image.open(ref)
        if isinstance(ref, bytes | bytearray):
            return Image.open(io.BytesIO(ref))
        if isinstance(ref, Mapping):
            if ref.get("bytes"):
                return Image.open(io.BytesIO(ref["bytes"]))
            if ref.get("path"):
                return Image.open(str(ref["path"]))
            raise UserError(f"{prefix}image dict has neither `bytes` nor `path`; fix the image column")
    except FileNotFoundError as exc:
        raise UserError(
            f"{prefix}image {describe(ref)} does not exist; fix the path or the dataset's image_base_path"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise UserError(_bomb(prefix, describe(ref), exc)) from None
    except UnidentifiedImageError as exc:
        raise UserError(
            f"{prefix}cannot read image {describe(ref)} (not a format PIL knows, or not an image); "
            "replace or drop it"
        ) from exc
    except (OSError, ValueError) as exc:
        raise UserError(f"{prefix}cannot read image {describe(ref)} ({exc}); replace or drop it") from exc
    raise UserError(
        f"{prefix}unsupported image value of type {type(ref).__name__}; use a path or an image dict"
    )


def load_image(obj: ImageRef, base: Path | None = None, *, where: str = "") -> Image.Image:
    """Decode an image fully and return it as RGB; a truncated or corrupt file is a `UserError`."""
    image = open_image(obj, base, where=where)
    prefix = f"{where}: " if where else ""
    try:
        image.load()
        return image if image.mode == "RGB" else image.convert("RGB")
    except Image.DecompressionBombError as exc:
        raise UserError(_bomb(prefix, describe(_plain(obj, base)), exc)) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserError(
            f"{prefix}cannot decode image {describe(_plain(obj, base))} ({exc}); replace or drop it"
        ) from exc


def _plain(obj: ImageRef, base: Path | None) -> ImageRef:
    return resolve_image_ref(os.fspath(obj) if isinstance(obj, os.PathLike) else obj, base)


def _bomb(prefix: str, name: str, exc: Exception) -> str:
    """PIL refuses images over 2 x `Image.MAX_IMAGE_PIXELS` pixels before decoding them: the header
    of a few KB can claim gigabytes of pixels."""
    return (
        f"{prefix}image {name} is too large to decode safely ({exc}); shrink it below PIL's limit or drop it"
    )
