"""Batch inference throughput of `sophiavl infer --input/--output`: answers/s and generated tokens/s.

Runs the real batch path (request file -> prompt building -> backend -> answers file) over the
built-in demo questions, for the hf backend (at one or more batch sizes) and the vLLM backend
(the whole file in one `generate`). Model load and vLLM engine start are timed apart and left
out of the rates. Greedy decoding; the tiny model is random, so most answers run to
`--max-new-tokens` and the rates compare backends, not answer quality.

Usage:
    python benchmarks/infer_throughput.py                                  # tiny model, CPU
    python benchmarks/infer_throughput.py --model sophiavl-r1-7b --rows 256 --max-new-tokens 1024
    python benchmarks/infer_throughput.py --backends hf --batch-sizes 1,4,16 --json

On CPU set VLLM_ENABLE_V1_MULTIPROCESSING=0 (as the test environment does) for the vllm backend.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def demo_requests(folder: Path, rows: int) -> Path:
    """`rows` requests built from the built-in demo set (every question type), cycling if needed."""
    from sophiavl_cli.data.demo import resolve_demo

    demo = resolve_demo()
    source = json.loads((demo / "train.json").read_text(encoding="utf-8"))
    lines = []
    for i in range(rows):
        row = source[i % len(source)]
        request: dict[str, Any] = {"id": f"q{i}", "prompt": row["problem"], "type": row["problem_type"]}
        if row["path"]:
            request["images"] = [str(demo / row["path"])]
        if row["options"]:
            request["options"] = row["options"]
        lines.append(json.dumps(request))
    path = folder / "requests.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def measure(
    args: argparse.Namespace, backend: str, batch_size: int, requests: Path, folder: Path
) -> dict[str, Any]:
    from sophiavl_cli.infer.batch import read_requests, run_batch
    from sophiavl_cli.infer.inferencer import GenerationSettings, Inferencer

    start = time.perf_counter()
    inferencer = Inferencer(
        args.model,
        backend=backend,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        batch_size=batch_size,
    )
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    if backend == "vllm":  # engine start is start-up, not throughput
        inferencer.backend.start(max(len(row.request.images) for row in read_requests(requests)))  # type: ignore[attr-defined]
    load_s = time.perf_counter() - start
    answers = folder / f"answers-{backend}-{batch_size}.jsonl"
    summary = run_batch(
        inferencer, requests, answers, settings, batch_size=None if backend == "vllm" else batch_size
    )
    inferencer.close()
    return {
        "backend": backend,
        "batch_size": "all" if backend == "vllm" else batch_size,
        "rows": summary.answered,
        "load_s": round(load_s, 2),
        "seconds": round(summary.seconds, 2),
        "answers_per_s": round(summary.answers_per_s, 3),
        "tokens_per_s": round(summary.tokens_per_s, 1),
        "generated_tokens": summary.completion_tokens,
    }


def main() -> None:
    from sophiavl_cli.infer.inferencer import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="builtin:tiny-qwen2.5-vl")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--batch-sizes", default="1,8", help="hf backend batch sizes, comma-separated")
    parser.add_argument("--min-pixels", type=int, default=DEFAULT_MIN_PIXELS)
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="one JSON object per line instead of a table")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory(prefix="sophiavl-infer-bench-") as tmp:
        folder = Path(tmp)
        requests = demo_requests(folder, args.rows)
        for backend in args.backends.split(","):
            sizes = [int(s) for s in args.batch_sizes.split(",")] if backend == "hf" else [1]
            for size in sizes:
                result = measure(args, backend, size, requests, folder)
                results.append(result)
                if args.json:
                    print(json.dumps(result), flush=True)
    if not args.json:
        header = f"{'backend':8} {'batch':>5} {'rows':>5} {'load s':>7} {'gen s':>7} {'answers/s':>10} {'tokens/s':>9}"
        print(
            f"model {args.model}, {args.max_new_tokens} new tokens max, pixels {args.min_pixels}..{args.max_pixels}"
        )
        print(header)
        for r in results:
            print(
                f"{r['backend']:8} {r['batch_size']!s:>5} {r['rows']:>5} {r['load_s']:>7} {r['seconds']:>7} "
                f"{r['answers_per_s']:>10} {r['tokens_per_s']:>9}"
            )


if __name__ == "__main__":
    sys.exit(main())
