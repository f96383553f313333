"""Validate an OpenAI chat-completions request body for the built-in reward server.

The subset a reward model needs: text and image parts, greedy or sampled decoding, and vLLM's
choice constraint under the key the installed vLLM reads (`structured_outputs: {"choice": [...]}`;
the older `guided_choice` is ignored with a warning, as vLLM 0.32 does). Images must be inline
`data:` URLs: fetching http(s) URLs from a server would let any caller make it reach the network.

Work is refused before it is done: the body is checked first, then every image's header is read
(its pixels counted against `max_image_pixels`, a decompression bomb refused), then `admit` (the
engine's question: does the text plus those images fit the model?) is asked with the texts and
the image sizes, and only then are the images decoded. A 50 MB prompt is a 400 in milliseconds,
not minutes of tokenizing and gigabytes of memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

logger = logging.getLogger(__name__)

_OTHER_CONSTRAINTS = ("json", "regex", "grammar", "json_object", "structural_tag")
_LEGACY_GUIDED = ("guided_choice", "guided_json", "guided_regex", "guided_grammar")


class RequestError(Exception):
    """A request the server refuses, with the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class ChatRequest:
    """A validated request: HF content-list messages (`{"type": "image"}` slots) and their images."""

    model: str
    messages: list[dict[str, Any]]
    images: list[Image.Image]
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    choices: list[str] | None


def _bad(message: str) -> RequestError:
    return RequestError(400, message)


Admit = Callable[[list[str], list[tuple[int, int]]], None]  # (texts, (width, height) per image)


def open_data_url(url: str) -> Image.Image:
    """`data:image/...;base64,...` -> a PIL image with only its header read (size known, pixels not
    decoded); anything else is a 400."""
    if not url.startswith("data:"):
        scheme = url.split(":", 1)[0] if ":" in url else "no scheme"
        raise _bad(
            f"image URLs must be inline data URLs (data:image/png;base64,...); {scheme} URLs are refused"
        )
    header, _, payload = url.partition(",")
    if not header.startswith("data:image/") or not header.endswith(";base64"):
        raise _bad("image data URLs must look like data:image/<format>;base64,<payload>")
    try:
        return Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError) as exc:
        raise _bad(f"an image data URL does not hold a readable image ({type(exc).__name__})") from None


def _content_parts(content: Any, images: list[str], max_images: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise _bad("message content must be a string or a list of parts")
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            ref = part.get("image_url")
            url = ref.get("url") if isinstance(ref, dict) else ref
            if not isinstance(url, str):
                raise _bad("an image_url part needs image_url.url")
            if len(images) >= max_images:
                raise _bad(f"at most {max_images} images per request")
            images.append(url)
            parts.append({"type": "image"})
        else:
            raise _bad(f"unsupported content part type {kind!r}; use text or image_url")
    return parts


def _choices(body: dict[str, Any]) -> list[str] | None:
    for key in _LEGACY_GUIDED:
        if key in body:
            logger.warning("ignoring the removed field %r; send structured_outputs={'choice': [...]}", key)
    constraint = body.get("structured_outputs")
    if constraint is None:
        return None
    if not isinstance(constraint, dict):
        raise _bad("structured_outputs must be an object")
    if any(constraint.get(key) is not None for key in _OTHER_CONSTRAINTS):
        raise _bad("the built-in server supports only structured_outputs.choice")
    choice = constraint.get("choice")
    if choice is None:
        return None
    if not isinstance(choice, list) or not choice or not all(isinstance(c, str) and c for c in choice):
        raise _bad("structured_outputs.choice must be a non-empty list of non-empty strings")
    return list(dict.fromkeys(choice))


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, int | float) or isinstance(value, bool) or not low <= value <= high:
        raise _bad(f"{key} must be a number in [{low}, {high}]")
    return float(value)


def parse_chat_request(
    body: Any, *, max_images: int = 8, max_image_pixels: int | None = None, admit: Admit | None = None
) -> ChatRequest:
    """Check the body and decode its images; raises `RequestError` (400) naming the bad field.

    Before any image is decoded: their pixels are counted from the headers (over `max_image_pixels`
    in all: 400) and `admit(texts, sizes)` may refuse the request (the module docstring says why).
    """
    if not isinstance(body, dict):
        raise _bad("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model is required")
    if body.get("stream"):
        raise _bad("stream=true is not supported by the built-in server")
    if body.get("n", 1) != 1:
        raise _bad("only n=1 is supported by the built-in server")
    raw_messages = body.get("messages")
    if not isinstance(raw_messages, list) or not raw_messages:
        raise _bad("messages must be a non-empty list")
    urls: list[str] = []
    messages = []
    for message in raw_messages:
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("system", "user", "assistant"):
            raise _bad(f"message role {role!r} is not supported; use system, user or assistant")
        messages.append({"role": role, "content": _content_parts(message.get("content"), urls, max_images)})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _bad("max_tokens must be a positive integer")
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise _bad("seed must be an integer")
    images = _decoded_images(messages, urls, max_image_pixels, admit)
    return ChatRequest(
        model=model,
        messages=messages,
        images=images,
        max_tokens=max_tokens,
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(body, "top_p", 1.0, 1e-6, 1.0),
        seed=seed,
        choices=_choices(body),
    )


def _decoded_images(
    messages: list[dict[str, Any]], urls: list[str], max_image_pixels: int | None, admit: Admit | None
) -> list[Image.Image]:
    """The images, decoded only once their headers and the text have passed the limits."""
    opened = [open_data_url(url) for url in urls]
    sizes = [image.size for image in opened]
    pixels = sum(width * height for width, height in sizes)
    if max_image_pixels is not None and pixels > max_image_pixels:
        raise _bad(
            f"the images hold {pixels:,} pixels, over this server's limit of {max_image_pixels:,} per request; "
            "send smaller images"
        )
    if admit is not None:
        texts = [p["text"] for m in messages for p in m["content"] if p["type"] == "text"]
        admit(texts, sizes)
    images = []
    for image in opened:
        try:
            image.load()
        except (ValueError, OSError, Image.DecompressionBombError) as exc:
            raise _bad(f"an image data URL does not hold a readable image ({type(exc).__name__})") from None
        images.append(image)
    return images
