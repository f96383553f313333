"""The built-in reward server batches concurrent requests and answers exactly as it does one by one.

A real uvicorn server in this process (so the test can read how many batches of which size ran)
over the real engine and the built-in tiny model, spoken to over HTTP.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn
from PIL import Image
from transformers import GenerationConfig, LogitsProcessorList

from sophiavl_cli.rewards.rm_request import image_to_data_url
from sophiavl_cli.rewards.score_parse import SCORE_CHOICES
from sophiavl_cli.serving.batcher import RequestBatcher
from sophiavl_cli.serving.chat_request import parse_chat_request
from sophiavl_cli.serving.choice_constraint import ChoiceLogitsProcessor, ChoiceTrie
from sophiavl_cli.serving.hf_app import build_app
from sophiavl_cli.serving.hf_engine import HFRewardEngine
from sophiavl_cli.serving.launcher import free_port

NAME = "thinking-reward-model"


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> HFRewardEngine:
    return HFRewardEngine(tiny_model_dir, device="cpu")


@pytest.fixture(scope="module")
def served(engine: HFRewardEngine) -> Iterator[tuple[str, RequestBatcher]]:
    batcher = RequestBatcher(engine, max_batch=16, window_s=0.2)
    port = free_port()
    config = uvicorn.Config(
        build_app(engine, served_model_name=NAME, api_key=None, max_request_bytes=1 << 24, batcher=batcher),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(600):
        if server.started:
            break
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/v1/chat/completions", batcher
    server.should_exit = True
    thread.join(timeout=10)


def body(i: int) -> dict[str, Any]:
    """Sixteen different requests: prompt lengths and image sizes vary (left padding), a third
    score-constrained, a third sampled with a seed, the rest greedy free text of varied budgets."""
    size = (28 * (1 + i % 3), 28 * (1 + (i // 3) % 3))
    content: list[dict[str, Any]] = [{"type": "text", "text": "Rate this. " * (1 + i % 5)}]
    if i % 4 != 3:
        color = ("red", "green", "blue", "white")[i % 4]
        content.append(
            {"type": "image_url", "image_url": {"url": image_to_data_url(Image.new("RGB", size, color))}}
        )
    request: dict[str, Any] = {"model": NAME, "messages": [{"role": "user", "content": content}]}
    if i % 3 == 0:
        request |= {"temperature": 0, "structured_outputs": {"choice": list(SCORE_CHOICES)}}
    elif i % 3 == 1:
        request |= {"temperature": 1.0, "top_p": 0.9, "seed": 1000 + i, "max_tokens": 6 + i % 4}
    else:
        request |= {"temperature": 0, "max_tokens": 3 + i % 5}
    return request


def answer(payload: dict[str, Any]) -> tuple[str, str, dict[str, int]]:
    choice = payload["choices"][0]
    return choice["message"]["content"], choice["finish_reason"], payload["usage"]


def test_sixteen_concurrent_requests_are_batched_and_answer_as_sixteen_sequential_ones(
    served: tuple[str, RequestBatcher],
) -> None:
    url, batcher = served
    bodies = [body(i) for i in range(16)]
    with httpx.Client(timeout=120) as client:
        sequential = []
        for request in bodies:
            response = client.post(url, json=request)
            assert response.status_code == 200, response.text
            sequential.append(answer(response.json()))
    assert set(batcher.batch_sizes) == {1}  # one at a time: sixteen batches of one
    batcher.batch_sizes.clear()

    async def all_at_once() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120) as client:
            return await asyncio.gather(*(client.post(url, json=request) for request in bodies))

    responses = asyncio.run(all_at_once())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    concurrent = [answer(r.json()) for r in responses]
    assert concurrent == sequential
    assert sum(size * count for size, count in batcher.batch_sizes.items()) == 16
    assert max(batcher.batch_sizes) > 1, batcher.batch_sizes
    assert sum(batcher.batch_sizes.values()) < 16  # fewer generate calls than requests
    scores = [
        text
        for (text, _, _), request in zip(concurrent, bodies, strict=True)
        if "structured_outputs" in request
    ]
    assert scores and all(text in SCORE_CHOICES for text in scores)


def test_a_bad_request_in_a_batch_fails_alone(engine: HFRewardEngine) -> None:
    good = parse_chat_request(body(0))
    too_long = parse_chat_request(
        {"model": NAME, "messages": [{"role": "user", "content": "x " * (engine.max_positions + 10)}]}
    )
    results = engine.generate_batch([good, too_long, good])
    assert results[0] == results[2] and results[0].text in SCORE_CHOICES
    assert getattr(results[1], "status", None) == 400 and "positions" in results[1].message


def test_greedy_requests_answer_as_transformers_generate_did_before_batching(engine: HFRewardEngine) -> None:
    """Differential against the one-request path the server had: a plain greedy `generate` with the
    choice mask as a logits processor gives the same text, constrained and free."""
    for constrained in (False, True):
        extra = {"structured_outputs": {"choice": list(SCORE_CHOICES)}} if constrained else {"max_tokens": 12}
        request = parse_chat_request(body(1) | {"temperature": 0} | extra, max_images=8)
        ours = engine.generate(request)
        encoded = engine.processor.encode(
            engine.processor.apply_chat_template(request.messages), request.images
        )
        input_ids = torch.tensor([encoded.input_ids])
        processors = LogitsProcessorList()
        budget = 12
        if constrained:
            ids = [engine.processor.tokenizer.encode(c, add_special_tokens=False) for c in SCORE_CHOICES]
            trie = ChoiceTrie(ids)
            budget = trie.max_length + 1
            processors.append(ChoiceLogitsProcessor(trie, input_ids.shape[1], engine.eos_token_ids))
        config = GenerationConfig(
            max_new_tokens=budget,
            eos_token_id=engine.eos_token_ids,
            pad_token_id=engine.generator.pad_id,
            do_sample=False,
        )
        reference = engine.model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            mm_token_type_ids=(input_ids == engine.generator.image_token_id).to(torch.int32),
            pixel_values=torch.from_numpy(encoded.pixel_values),
            image_grid_thw=torch.from_numpy(encoded.image_grid_thw),
            generation_config=config,
            logits_processor=processors,
        )[0, input_ids.shape[1] :].tolist()
        completion = next(
            (i + 1 for i, t in enumerate(reference) if t in engine.eos_token_ids), len(reference)
        )
        assert ours.completion_tokens == completion
        assert ours.text == engine.processor.decode(reference[:completion])
        assert ours.text in SCORE_CHOICES if constrained else True


def test_per_row_sampling_draws_from_transformers_warped_distribution() -> None:
    """20,000 rows, each with its own seed, one draw each: the frequencies are the softmax of the
    logits after transformers' temperature and top-p warpers, and masked tokens never come up."""
    from transformers import TemperatureLogitsWarper, TopPLogitsWarper

    from sophiavl_cli.generation.row_sampling import RowSampler, RowSampling

    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5]])  # [1, V]
    rows = 20_000
    sampler = RowSampler([RowSampling(temperature=0.7, top_p=0.8, seed=seed) for seed in range(rows)])
    chosen = sampler(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone()).argmax(dim=-1)
    warped = TopPLogitsWarper(0.8)(None, TemperatureLogitsWarper(0.7)(None, logits.clone()))
    expected = torch.softmax(warped, dim=-1)[0]  # [V]
    observed = torch.bincount(chosen, minlength=6).double() / rows
    assert observed[expected == 0].sum() == 0  # the -inf token and those top-p cut
    assert torch.allclose(observed, expected.double(), atol=0.015), (observed, expected)
    again = RowSampler([RowSampling(temperature=0.7, top_p=0.8, seed=seed) for seed in range(rows)])
    assert torch.equal(
        again(torch.zeros((rows, 1), dtype=torch.long), logits.expand(rows, -1).clone()).argmax(-1), chosen
    )
