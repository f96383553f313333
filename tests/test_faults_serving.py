"""`serve-reward` under hostile requests: oversized work is refused before it is decoded or
tokenized, outside the generating batch, and the memory of a large body is handed back.

Real servers on loopback ports: a uvicorn server in this process over the real engine and the
built-in tiny model (so the test can read which requests reached a batch), and a child server
started as training starts it (so its memory can be read on its own).
"""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import uvicorn
from PIL import Image

from sophiavl_cli.data.length import capped_token_count
from sophiavl_cli.rewards.rm_request import image_to_data_url
from sophiavl_cli.serving.batcher import RequestBatcher
from sophiavl_cli.serving.hf_app import build_app
from sophiavl_cli.serving.hf_engine import HFRewardEngine
from sophiavl_cli.serving.hf_server import DEFAULT_MAX_REQUEST_BYTES
from sophiavl_cli.serving.launcher import free_port, start_reward_server

NAME = "thinking-reward-model"
KEY = "sk-faults-serving-3c1d"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> HFRewardEngine:
    return HFRewardEngine(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def served(engine: HFRewardEngine) -> Iterator[tuple[str, RequestBatcher]]:
    batcher = RequestBatcher(engine, max_batch=16, window_s=0.05)
    app = build_app(
        engine,
        served_model_name=NAME,
        api_key=None,
        max_request_bytes=DEFAULT_MAX_REQUEST_BYTES,
        max_image_pixels=10_000_000,
        batcher=batcher,
    )
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}/v1/chat/completions", batcher
    server.should_exit = True
    thread.join(timeout=30)


def chat(text: str, image_urls: tuple[str, ...] = ()) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {
        "model": NAME,
        "messages": [{"role": "user", "content": content}],
        "temperature": 0,
        "max_tokens": 2,
    }


def one_bit_png(side: int) -> bytes:
    """A real one-bit PNG of side x side pixels: a few KB to send, side**2 pixels to decode."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\x00" + b"\x00" * ((side + 7) // 8)) * side
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows, 9))
        + chunk(b"IEND", b"")
    )


class _Recorder:
    """The tokenizer as `capped_token_count` sees it, recording how many characters it encoded."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.chars = 0

    def get_vocab(self) -> dict[str, int]:
        return self.tokenizer.get_vocab()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        self.chars += len(text)
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens)


def test_counting_a_text_far_over_the_limit_stops_after_the_limits_worth(engine: HFRewardEngine) -> None:
    recorder = _Recorder(engine.processor.tokenizer)
    limit = 2000
    text = "a " * 19_000  # under the character ceiling, ~19k tokens
    assert capped_token_count(recorder, text, limit) == limit + 1
    assert recorder.chars < len(text) / 2, recorder.chars
    recorder.chars = 0
    short = "a " * 500  # under the limit: the exact count
    assert capped_token_count(recorder, short, limit) == len(engine.processor.tokenizer.encode(short))


def test_an_oversized_prompt_is_refused_beside_the_batch_and_a_normal_one_is_answered(
    served: tuple[str, RequestBatcher],
) -> None:
    url, batcher = served
    batcher.batch_sizes.clear()
    huge = chat("a " * 30_000)  # 60 kB, under the character ceiling, ~30k tokens > 4,096 positions
    normal = chat("Is the square red?", (image_to_data_url(Image.new("RGB", (56, 56), "red")),))

    async def both() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=600) as client:
            return await asyncio.gather(client.post(url, json=huge), client.post(url, json=normal))

    refused, answered = asyncio.run(both())
    assert refused.status_code == 400, refused.text
    assert "over the model's 4,096 positions" in refused.json()["error"]["message"]
    assert answered.status_code == 200, answered.text
    # The huge request never reached the engine: no batch was held up tokenizing it.
    assert sum(size * count for size, count in batcher.batch_sizes.items()) == 1


def test_images_over_the_pixel_budget_are_refused_from_their_headers(
    served: tuple[str, RequestBatcher],
) -> None:
    url, batcher = served
    batcher.batch_sizes.clear()
    png = one_bit_png(4000)  # 16 M pixels in a few kB; the budget here is 10 M
    assert len(png) < 100_000
    body = chat("Rate this.", ("data:image/png;base64," + base64.b64encode(png).decode("ascii"),))
    response = httpx.post(url, json=body, timeout=600)
    assert response.status_code == 400, response.text
    assert "16,000,000 pixels, over this server's limit of 10,000,000" in response.json()["error"]["message"]
    assert not batcher.batch_sizes


def test_the_default_body_limit_is_16_mib_and_a_15_mb_prompt_leaves_no_memory_behind(
    tiny_model_dir: Path,
) -> None:
    assert DEFAULT_MAX_REQUEST_BYTES == 16 * 2**20
    with start_reward_server(str(tiny_model_dir), api_key=KEY, startup_timeout=300) as server:
        process = psutil.Process(server.process.pid)
        url = f"{server.base_url}/chat/completions"
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(timeout=600, headers=headers) as client:
            warm = client.post(url, json=chat("Is it red?"))
            assert warm.status_code == 200, warm.text
            before = process.memory_info().rss
            big = client.post(url, json=chat("lorem ipsum " * 1_250_000))  # 15 MB of text
            assert big.status_code == 400, big.text
            assert "positions" in big.json()["error"]["message"]
            after = process.memory_info().rss
            over = client.post(url, content=b"x" * (DEFAULT_MAX_REQUEST_BYTES + 1))
            assert over.status_code == 413
            again = client.post(url, json=chat("Is it red?"))
            assert again.status_code == 200, again.text
    assert after - before < 200 * 2**20, f"the server kept {(after - before) / 2**20:.0f} MiB"
