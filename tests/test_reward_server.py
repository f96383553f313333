"""The built-in reward server (hf backend) with the built-in tiny model, started as users get it.

One server per module (started through `start_reward_server`, a real child process on a free
loopback port); a few requests each: the tiny model generates in milliseconds.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from model_families import PATHS
from PIL import Image

from sophiavl_cli.errors import UserError
from sophiavl_cli.models import resolve_model
from sophiavl_cli.rewards.rm_request import ThinkingSample, build_messages, image_to_data_url
from sophiavl_cli.rewards.score_parse import SCORE_CHOICES
from sophiavl_cli.rewards.thinking import ThinkingRewardClient
from sophiavl_cli.serving.chat_request import RequestError, parse_chat_request
from sophiavl_cli.serving.choice_constraint import ChoiceLogitsProcessor, ChoiceTrie, match_choice
from sophiavl_cli.serving.launcher import RewardServer, free_port, start_reward_server
from sophiavl_cli.serving.vllm_server import child_env, vllm_command

KEY = "sk-server-test-91be"
NAME = "thinking-reward-model"


@pytest.fixture(scope="module")
def server(tiny_model_dir: Path) -> Iterator[RewardServer]:
    with start_reward_server(str(tiny_model_dir), api_key=KEY, startup_timeout=180) as running:
        yield running


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def png_url(color: str, size: tuple[int, int] = (56, 56)) -> str:
    return image_to_data_url(Image.new("RGB", size, color))


def chat_body(*, image_urls: list[str], text: str = "Is the square red?", **extra: Any) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"model": NAME, "messages": [{"role": "user", "content": content}], "temperature": 0, **extra}


def post(server: RewardServer, body: Any, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", auth())
    return httpx.post(f"{server.base_url}/chat/completions", json=body, headers=headers, timeout=60, **kwargs)


# --------------------------------------------------------------------------- endpoints


def test_health_answers_without_a_key(server: RewardServer) -> None:
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=10).status_code == 200


def test_models_lists_the_served_name_only_for_the_right_key(server: RewardServer) -> None:
    ok = httpx.get(f"{server.base_url}/models", headers=auth(), timeout=10)
    assert ok.status_code == 200 and [m["id"] for m in ok.json()["data"]] == [NAME]
    assert httpx.get(f"{server.base_url}/models", timeout=10).status_code == 401
    assert httpx.get(f"{server.base_url}/models", headers=auth("wrong"), timeout=10).status_code == 401


def test_a_chat_completion_with_an_image_data_url_answers(server: RewardServer) -> None:
    response = post(server, chat_body(image_urls=[png_url("red")], max_tokens=8))
    assert response.status_code == 200, response.text
    payload = response.json()
    assert payload["object"] == "chat.completion" and payload["model"] == NAME
    assert isinstance(payload["choices"][0]["message"]["content"], str)
    assert payload["usage"]["completion_tokens"] <= 8
    assert payload["usage"]["prompt_tokens"] > 4  # text plus the image's vision tokens


def test_the_choice_constraint_returns_one_of_the_eleven_scores(server: RewardServer) -> None:
    for color in ("red", "green", "blue"):
        body = chat_body(image_urls=[png_url(color)], structured_outputs={"choice": list(SCORE_CHOICES)})
        response = post(server, body)
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] in SCORE_CHOICES


def test_a_chat_completion_without_the_key_is_401(server: RewardServer) -> None:
    assert post(server, chat_body(image_urls=[]), headers={}).status_code == 401


def test_http_image_urls_are_refused(server: RewardServer) -> None:
    response = post(server, chat_body(image_urls=["http://example.org/cat.png"]))
    assert response.status_code == 400 and "data URL" in response.json()["error"]["message"]


def test_an_unknown_model_name_is_404(server: RewardServer) -> None:
    response = post(server, {**chat_body(image_urls=[]), "model": "gpt-4o"})
    assert response.status_code == 404 and NAME in response.json()["error"]["message"]


def test_an_oversized_body_is_413_declared_or_streamed(server: RewardServer) -> None:
    blob = b'{"model": "x", "pad": "' + b"a" * (65 * 2**20) + b'"}'
    declared = httpx.post(f"{server.base_url}/chat/completions", content=blob, headers=auth(), timeout=60)
    assert declared.status_code == 413

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(blob), 2**20):
            yield blob[start : start + 2**20]

    streamed = httpx.post(f"{server.base_url}/chat/completions", content=chunks(), headers=auth(), timeout=60)
    assert streamed.status_code == 413


def test_the_key_is_passed_by_environment_not_argv(server: RewardServer) -> None:
    cmdline = Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    assert KEY.encode() not in cmdline and KEY not in repr(server)


# --------------------------------------------------------------------------- client end to end


def test_the_client_scores_end_to_end_against_the_built_in_server(server: RewardServer) -> None:
    image = Image.new("RGB", (64, 48), "yellow")
    batch = [
        ThinkingSample("How many sides?", f"<think>count {i}</think><answer>4</answer>", [image])
        for i in range(3)
    ]
    with ThinkingRewardClient(server.base_url, server.model, api_key=server.api_key, timeout=60) as client:
        assert client.health_check() == [NAME]
        results = client.score_many_sync(batch)
        stats = client.stats()
    assert all(r.ok and r.score is not None and 0 <= r.score <= 1 for r in results)
    assert stats["rm/calls"] == 3 and stats["rm/failures"] == 0


# --------------------------------------------------------------------------- launcher and CLI


def test_a_server_that_dies_on_startup_shows_its_log_tail(tmp_path: Path) -> None:
    with pytest.raises(UserError) as info:
        start_reward_server(str(tmp_path / "no-such-model"), startup_timeout=60, log_path=tmp_path / "rm.log")
    message = str(info.value)
    assert (tmp_path / "rm.log").is_file() and str(tmp_path / "rm.log") in message
    assert "exited with code" in message and "no-such-model" in message.split("last lines", 1)[1]


def test_a_stopped_server_no_longer_answers(tiny_model_dir: Path) -> None:
    running = start_reward_server(str(tiny_model_dir), startup_timeout=180)
    assert running.log_path.is_file()
    running.stop()
    running.stop()  # idempotent
    assert not running.running and not running.log_path.exists()  # its temp log goes with it
    with pytest.raises(httpx.HTTPError):
        httpx.get(running.base_url.removesuffix("/v1") + "/health", timeout=2)


def test_serve_reward_cli_serves_until_interrupted(tiny_model_dir: Path) -> None:
    port = free_port()
    env = {**os.environ, "SOPHIAVL_REWARD_API_KEY": KEY}
    command = [sys.executable, "-m", "sophiavl_cli", "serve-reward", str(tiny_model_dir), "--backend", "hf"]
    child = subprocess.Popen(
        [*command, "--port", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if (
                    httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=auth(), timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("serve-reward never answered")
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2).status_code == 401
    finally:
        child.send_signal(signal.SIGINT)
        output = child.communicate(timeout=30)[0].decode()
    assert "required" in output and KEY not in output


def test_the_vllm_command_has_the_reward_flags_and_no_key() -> None:
    command = vllm_command(
        "/models/rm", port=8123, served_model_name="rm", max_model_len=8192, limit_images=2
    )
    joined = " ".join(command)
    assert command[:5] == [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        "/models/rm",
    ]
    for flag in ("--served-model-name rm", "--port 8123", "--host 127.0.0.1", "--max-model-len 8192"):
        assert flag in joined
    assert command[command.index("--limit-mm-per-prompt") + 1] == '{"image": 2}'
    env = child_env("sk-vllm")
    assert env["VLLM_API_KEY"] == "sk-vllm" and "sk-vllm" not in joined


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("name", PATHS["serve (vLLM)"])
def test_vllm_serves_the_tiny_model_and_honours_the_choice_constraint(name: str) -> None:
    """The real vLLM server with our flags (what `sophiavl serve-reward --backend vllm` starts), a
    Qwen2.5-VL and a Qwen3-VL reward model: the key via env, structured_outputs.choice obeyed."""
    with start_reward_server(
        str(resolve_model(f"builtin:{name}")),
        backend="vllm",
        api_key=KEY,
        gpu_memory_utilization=0.1,
        startup_timeout=540,
    ) as running:
        assert httpx.get(f"{running.base_url}/models", timeout=10).status_code == 401
        for color in ("red", "blue"):
            body = chat_body(image_urls=[png_url(color)], structured_outputs={"choice": list(SCORE_CHOICES)})
            response = post(running, body)
            assert response.status_code == 200, response.text
            assert response.json()["choices"][0]["message"]["content"] in SCORE_CHOICES
    assert not running.running


# --------------------------------------------------------------------------- pure parts


def test_the_choice_mask_allows_only_trie_continuations_and_eos_at_the_end() -> None:
    trie = ChoiceTrie([[5, 6], [5, 7, 8], [9]])
    processor = ChoiceLogitsProcessor(trie, prompt_length=2, eos_token_ids=[0])
    scores = torch.zeros(3, 10)
    scores[:, 1] = 100.0  # the model's favourite token is in no choice
    input_ids = torch.tensor([[3, 3, 5, 5], [3, 3, 5, 6], [3, 3, 9, 0]])[:, :3]  # generated: [5], [5], [9]
    masked = processor(input_ids, scores)
    allowed = [sorted(torch.nonzero(torch.isfinite(row)).flatten().tolist()) for row in masked]
    assert allowed == [[6, 7], [6, 7], [0]]
    assert match_choice([5, 7, 8, 0, 4], {"a": [5, 6], "b": [5, 7, 8]}, [0]) == "b"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model is required"),
        ({"model": "m", "messages": []}, "messages"),
        ({"model": "m", "messages": [{"role": "tool", "content": "x"}]}, "role"),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n=1"),
        (
            {
                "model": "m",
                "messages": [{"role": "user", "content": "x"}],
                "structured_outputs": {"regex": "a"},
            },
            "choice",
        ),
        ({"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 5}, "temperature"),
        (
            {
                "model": "m",
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@"}}],
                    }
                ],
            },
            "readable image",
        ),
    ],
)
def test_bad_requests_are_refused_naming_the_field(body: dict[str, Any], fragment: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_chat_request(body)
    assert info.value.status == 400 and fragment in info.value.message


def test_the_rm_request_decodes_back_to_the_same_image() -> None:
    image = Image.new("RGB", (7, 5), (10, 20, 30))
    messages = build_messages(ThinkingSample("q", "r", [image]), [image_to_data_url(image)])
    request = parse_chat_request({"model": "m", "messages": messages})
    assert request.messages[1]["content"][1] == {"type": "image"}
    decoded = request.images[0].convert("RGB")
    assert decoded.size == (7, 5) and decoded.getpixel((3, 2)) == (10, 20, 30)
    raw = base64.b64decode(image_to_data_url(image).split(",", 1)[1])
    assert Image.open(io.BytesIO(raw)).format == "PNG"
