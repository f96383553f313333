"""What one thinking-reward-model request holds: the sample, its images as data URLs, the messages.

The layout is the one the released RM was fine-tuned on (strings in `data/prompts.py`): system
"You are a helpful assistant.", then a user turn of the evaluator text followed by the image(s).
Departure from the released code: it sent only the first image; every image of the sample is sent.
"""

from __future__ import annotations

import asyncio
import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from PIL import Image

from sophiavl_cli.data.images import open_image
from sophiavl_cli.data.prompts import RM_SYSTEM_PROMPT, rm_user_text
from sophiavl_cli.errors import UserError

ImageLike = Image.Image | bytes | str | Path

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ThinkingSample:
    """One rollout to score: the decoded policy prompt, the whole response, the prompt's images."""

    prompt_text: str
    response: str
    images: Sequence[ImageLike] = field(default_factory=tuple)


def image_to_data_url(image: ImageLike) -> str:
    """Any image -> `data:image/png;base64,...`; PNG bytes/files are sent as they are, others re-encoded."""
    if isinstance(image, Image.Image):
        pil = image
    else:
        raw = Path(image).read_bytes() if isinstance(image, str | Path) else bytes(image)
        pil = open_image(raw)  # the header only: a decompression bomb is refused here, not decoded
        if raw.startswith(_PNG_MAGIC):
            pil.close()
            return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")
    if pil.mode not in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):
        pil = pil.convert("RGB")
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG", compress_level=1)  # lossless either way; 1 is ~3x faster than 6
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class ImageEncoder:
    """Data URLs for one batch, each distinct image encoded once, off the event loop, when first needed.

    A group's rollouts share their prompt's image: it is encoded once, and the group's requests go
    out as soon as that one image is ready instead of after every image of the step.
    """

    def __init__(self) -> None:
        self._tasks: dict[int | str, asyncio.Future[str]] = {}

    async def urls(self, images: Sequence[ImageLike]) -> list[str]:
        """The images' data URLs; raises OSError/ValueError for an image that cannot be read."""
        pending = []
        for image in images:
            key: int | str = str(image) if isinstance(image, str | Path) else id(image)
            if key not in self._tasks:
                self._tasks[key] = asyncio.ensure_future(asyncio.to_thread(image_to_data_url, image))
            pending.append(self._tasks[key])
        return list(await asyncio.gather(*pending))


def build_messages(sample: ThinkingSample, image_urls: Sequence[str]) -> list[dict[str, Any]]:
    """OpenAI chat messages: system prompt, then [evaluator text, image_url...]."""
    content: list[dict[str, Any]] = [
        {"type": "text", "text": rm_user_text(sample.prompt_text, sample.response)}
    ]
    content.extend({"type": "image_url", "image_url": {"url": url}} for url in image_urls)
    return [{"role": "system", "content": RM_SYSTEM_PROMPT}, {"role": "user", "content": content}]


def normalize_base_url(url: str, *, source: str = "reward.thinking.url") -> str:
    """A base URL the OpenAI client can append `/chat/completions` and `/models` to.

    The released code posted to OPENAI_API_URL as is, so users set the full
    `.../v1/chat/completions` URL; a bare `http://host:port` gets `/v1`, as vLLM serves there.

    Example:
        >>> normalize_base_url("http://localhost:8000/v1/chat/completions")
        'http://localhost:8000/v1'
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.username is not None or parts.password is not None:  # never echoed: it holds a secret
        raise UserError(
            f"{source}: the URL carries credentials (user:password@), which would be sent and logged with "
            "every request; remove them and put the API key in the variable reward.thinking.api_key_env "
            "names (default OPENAI_API_KEY)"
        )
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UserError(
            f"{source}: {text!r} is not an http(s) URL; use e.g. http://127.0.0.1:8000/v1 "
            "(or the full .../v1/chat/completions URL)"
        )
    path = parts.path.rstrip("/")
    for suffix in ("/chat/completions", "/completions", "/models"):
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if not path:
        path = "/v1"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))
