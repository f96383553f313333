"""Benchmark: the thinking-reward client against the released one-call-at-a-time loop.

A loopback server (a separate process, so it does not share the client's interpreter lock)
answers every chat completion after a fixed delay, like an RM whose latency is all generation.
We score N responses (16 prompts x 8 rollouts, one 448x448 image per prompt):

- sequential: a blocking POST per response, one after another (what the released code did);
- client: `ThinkingRewardClient.submit(...)` with bounded concurrency.

The ideal for the client is delay x ceil(N / concurrency): latency-bound, zero overhead.
Target (issue 11, which moved the client onto `openai.AsyncOpenAI`): within 1.5x of the ideal.
Issue 4's ">= 50x faster than sequential" was set for the hand-written client; the speed-up is
still printed (it is the same figure measured against the released loop), no longer judged.

Run:
    python benchmarks/reward_client.py                 # N=128, delay 0.2 s, concurrency 64
    python benchmarks/reward_client.py --n 256 --concurrency 32
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import subprocess
import sys
import time
from typing import Any

import httpx
from PIL import Image
from rich.console import Console
from rich.table import Table

from sophiavl_cli.rewards.rm_request import build_messages, image_to_data_url
from sophiavl_cli.rewards.thinking import ThinkingRewardClient, ThinkingSample

MODEL = "thinking-reward-model"
REPLY = json.dumps(
    {
        "id": "bench",
        "object": "chat.completion",
        "created": 0,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": "<answer>0.7</answer>"},
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
MODELS = json.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "bench"}]}
).encode()


# ----------------------------------------------------------------------------- the slow server


def serve(port: int, delay: float) -> None:
    """A minimal ASGI app under uvicorn: drain the body, sleep `delay`, answer a fixed completion."""
    import uvicorn

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if scope["path"].endswith("/health"):
            body = b""
        elif scope["path"].endswith("/models"):
            body = MODELS
        else:
            await asyncio.sleep(delay)
            body = REPLY
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False, backlog=1024)


def start_server(delay: float) -> tuple[subprocess.Popen[bytes], str]:
    from sophiavl_cli.serving.launcher import free_port

    port = free_port()
    process = subprocess.Popen([sys.executable, __file__, "--serve-port", str(port), "--delay", str(delay)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process, f"http://127.0.0.1:{port}/v1"
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the benchmark server did not start")


# ----------------------------------------------------------------------------- the two approaches


def make_samples(n: int) -> list[ThinkingSample]:
    images = [Image.new("RGB", (448, 448), (i * 15 % 256, 80, 160)) for i in range(math.ceil(n / 8))]
    response = "<think>" + "Let me think step by step. " * 40 + "</think><answer>42</answer>"
    return [
        ThinkingSample(f"Question {i // 8}: what is shown?", response, [images[i // 8]]) for i in range(n)
    ]


def run_sequential(url: str, samples: list[ThinkingSample]) -> float:
    """One blocking call at a time, each encoding its image, as the released reward function did."""
    started = time.perf_counter()
    with httpx.Client(timeout=60) as http:
        for sample in samples:
            messages = build_messages(sample, [image_to_data_url(image) for image in sample.images])
            body = {"model": MODEL, "messages": messages, "temperature": 0.0}
            http.post(f"{url}/chat/completions", json=body).raise_for_status()
    return time.perf_counter() - started


def run_client(
    url: str, samples: list[ThinkingSample], concurrency: int, repeats: int
) -> list[tuple[float, float]]:
    """(wall, client CPU) seconds per repeat; CPU covers every thread of this process."""
    runs = []
    with ThinkingRewardClient(url, MODEL, concurrency=concurrency, timeout=30, api_key="bench") as client:
        client.health_check()  # training checks before step 1; it also warms the loop thread up
        client.score_many_sync(samples[:2])
        for _ in range(repeats):
            cpu, started = time.process_time(), time.perf_counter()
            results = client.submit(samples).result()
            runs.append((time.perf_counter() - started, time.process_time() - cpu))
            failed = [r for r in results if not r.ok]
            if failed:
                raise SystemExit(f"{len(failed)} calls failed: {failed[0]}")
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=128, help="responses to score")
    parser.add_argument("--delay", type=float, default=0.2, help="server latency per request (s)")
    parser.add_argument("--concurrency", type=int, default=64, help="client requests in flight")
    parser.add_argument("--repeats", type=int, default=3, help="client runs; the best is compared")
    parser.add_argument("--serve-port", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_port is not None:
        serve(args.serve_port, args.delay)
        return
    samples = make_samples(args.n)
    process, url = start_server(args.delay)
    try:
        runs = run_client(url, samples, args.concurrency, args.repeats)
        sequential_s = run_sequential(url, samples)
    finally:
        process.terminate()
        process.wait(timeout=10)
    client_s, client_cpu = min(runs)
    median_s = sorted(wall for wall, _ in runs)[len(runs) // 2]
    ideal_s = args.delay * math.ceil(args.n / args.concurrency)
    speedup, vs_ideal = sequential_s / client_s, client_s / ideal_s
    table = Table(
        title=f"thinking-reward client: {args.n} responses, {args.delay * 1000:.0f} ms server latency",
        caption=f"client: best of {len(runs)} runs (median {median_s:.3f} s); "
        f"ideal = {args.delay} s x ceil({args.n} / {args.concurrency})",
    )
    for column in ("approach", "wall (s)", "speed-up", "vs ideal", "client CPU (s)"):
        table.add_column(column, justify="right" if column != "approach" else "left")
    table.add_row(
        "sequential (released)", f"{sequential_s:.2f}", "1.0x", f"{sequential_s / ideal_s:.1f}x", ""
    )
    table.add_row(
        f"client ({args.concurrency} in flight)",
        f"{client_s:.3f}",
        f"{speedup:.1f}x",
        f"{vs_ideal:.2f}x",
        f"{client_cpu:.3f}",
    )
    table.add_row("ideal (latency-bound)", f"{ideal_s:.3f}", f"{sequential_s / ideal_s:.1f}x", "1.00x", "")
    console = Console(width=max(100, Console().width))
    console.print(table)
    verdict = "[green]met[/]" if vs_ideal <= 1.5 else "[red]missed[/]"
    console.print(f"target (<= 1.5x the ideal): {verdict}; {speedup:.0f}x faster than the released loop")


if __name__ == "__main__":
    main()
